"""Small LPIPS-style perceptual distance whose weights come from a local .npz file.

LPIPS weights cannot be downloaded at run time, so the network is a plain conv stack that any
exporter can fill. The .npz file holds float arrays for layers i = 0 .. L-1 (contiguous, L >= 1):
  conv{i}_weight  [out_i, in_i, k_i, k_i]  OIHW, k_i odd, in_0 = 3, in_i = out_{i-1}
  conv{i}_bias    [out_i]
  lin{i}          [out_i]                  non-negative channel weights of layer i's distance
and nothing else. Network: x in [0, 1] -> 2x - 1 -> per layer: conv (stride 1, SAME padding) ->
ReLU = feature f_i, then 2x2 max-pool before the next layer. Distance, as in LPIPS:
  d(a, b) = sum_i mean_{h,w} sum_c lin_i[c] * (f_i(a) / |f_i(a)| - f_i(b) / |f_i(b)|)^2,
with |.| the channel-wise L2 norm (eps 1e-8 inside the square root).
"""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

_EPS = 1e-8


class PerceptualNet(eqx.Module):
    """Frozen conv features; `net(a, b)` is the perceptual distance per image."""

    weights: tuple[Float[Array, "_out _in _k _k"], ...]
    biases: tuple[Float[Array, " _out"], ...]
    lins: tuple[Float[Array, " _out"], ...]

    def features(self, images: Float[Array, "n h w 3"]) -> list[Float[Array, "n _ _ _"]]:
        """Unit-normalised ReLU features of every layer, NHWC."""
        x, out = 2.0 * images.astype(jnp.float32) - 1.0, []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i:
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                          "SAME")
            x = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "OIHW", "NHWC"))
            x = jax.nn.relu(x + b.reshape(1, 1, 1, -1))
            out.append(x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + _EPS))
        return out

    def __call__(
        self, a: Float[Array, "*batch h w 3"], b: Float[Array, "*batch h w 3"]
    ) -> Float[Array, "*batch"]:
        lead = a.shape[:-3]
        fa, fb = (self.features(x.reshape(-1, *x.shape[-3:])) for x in (a, b))
        total = jnp.zeros((fa[0].shape[0],), jnp.float32)
        for x, y, lin in zip(fa, fb, self.lins, strict=True):
            total = total + jnp.mean(jnp.square(x - y) @ lin, axis=(1, 2))
        return total.reshape(lead)


def load_perceptual(path: str | Path) -> PerceptualNet:
    """Reads and validates a weight file in the format of the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual weights file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:  # np.load raises several types for corrupt files
        raise ValueError(f"perceptual weights file {path} is not a readable .npz file "
                         f"({type(error).__name__}: {error}).") from error

    def fail(message):
        raise ValueError(f"perceptual weights file {path}: {message} (format: see "
                         "tokenizer.perceptual).")

    layers, channels = [], 3
    while f"conv{len(layers)}_weight" in arrays:
        i = len(layers)
        names = (f"conv{i}_weight", f"conv{i}_bias", f"lin{i}")
        for name in names:
            if name not in arrays:
                fail(f"array {name!r} is missing")
            if not np.issubdtype(arrays[name].dtype, np.floating):
                fail(f"array {name!r} has dtype {arrays[name].dtype}, expected a float dtype")
            if not np.all(np.isfinite(arrays[name])):
                fail(f"array {name!r} has non-finite values")
        w, b, lin = (arrays.pop(name) for name in names)
        if w.ndim != 4 or w.shape[1] != channels or w.shape[2] != w.shape[3] or w.shape[2] % 2 == 0:
            fail(f"array 'conv{i}_weight' has shape {w.shape}, expected (out, {channels}, k, k) "
                 "with k odd")
        for name, v in ((f"conv{i}_bias", b), (f"lin{i}", lin)):
            if v.shape != (w.shape[0],):
                fail(f"array {name!r} has shape {v.shape}, expected ({w.shape[0]},)")
        if np.any(lin < 0):
            fail(f"array 'lin{i}' has negative values")
        layers.append(tuple(jnp.asarray(v, jnp.float32) for v in (w, b, lin)))
        channels = w.shape[0]
    if not layers:
        fail("array 'conv0_weight' is missing")
    if arrays:
        fail(f"unexpected arrays {sorted(arrays)}")
    weights, biases, lins = zip(*layers, strict=True)
    return PerceptualNet(weights=weights, biases=biases, lins=lins)
