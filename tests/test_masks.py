"""Mask builders against hand-written cases."""

import numpy as np
import pytest

from core import block_causal_mask, causal_mask, frame_mask, modality_mask


def test_causal_and_block_causal():
    np.testing.assert_array_equal(causal_mask(3), [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(
        block_causal_mask(2, 2),
        [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]],
    )


def test_modality_mask_tokenizer_encoder_rules():
    # groups: 2 patches, then 1 latent. Patches see patches; latents see everything.
    mask = modality_mask([2, 1], [[True, False], [True, True]])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="2x2"):
        modality_mask([2, 1], [[True]])
    with pytest.raises(ValueError, match="positive"):
        modality_mask([0, 1], [[True, True], [True, True]])


def test_frame_mask_combines_both():
    within = modality_mask([1, 1], [[True, False], [True, True]])
    want = np.array([
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 1],
    ], bool)
    np.testing.assert_array_equal(frame_mask(2, within), want)
