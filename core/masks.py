"""Boolean attention-mask builders (True = the query may attend to the key).

- `causal_mask(n)`: token i sees tokens j <= i.
- `block_causal_mask(frames, tokens)`: over frames * tokens flattened tokens, a token sees every
  token of its own frame and of earlier frames.
- `modality_mask(sizes, rules)`: within one frame made of consecutive token groups, group a sees
  group b iff rules[a][b]; e.g. the tokenizer encoder's latents see patches and latents while
  patches see only patches.
- `frame_mask`: block-causal and modality rules together, for full (non-axial) attention.
"""

from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool


def causal_mask(n: int) -> Bool[np.ndarray, "n n"]:
    return np.tril(np.ones((n, n), dtype=bool))


def block_causal_mask(frames: int, tokens: int) -> Bool[np.ndarray, "n n"]:
    frame_of = np.repeat(np.arange(frames), tokens)
    return frame_of[None, :] <= frame_of[:, None]


def modality_mask(sizes: Sequence[int], rules: Sequence[Sequence[bool]]) -> Bool[np.ndarray, "n n"]:
    """Expands a group-to-group rule matrix [groups, groups] to a token mask [n, n]."""
    rules = np.asarray(rules, dtype=bool)
    if rules.shape != (len(sizes), len(sizes)):
        raise ValueError(f"rules must be {len(sizes)}x{len(sizes)} for {len(sizes)} groups, "
                         f"got shape {rules.shape}.")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"group sizes must be positive, got {list(sizes)}.")
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    return rules[group_of[:, None], group_of[None, :]]


def frame_mask(frames: int, within_frame: Bool[np.ndarray, "s s"]) -> Bool[np.ndarray, "n n"]:
    """Block-causal over frames with `within_frame` rules between the tokens of any two frames."""
    tokens = within_frame.shape[0]
    return block_causal_mask(frames, tokens) & np.tile(within_frame, (frames, frames))
