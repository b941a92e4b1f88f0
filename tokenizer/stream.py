"""Frame-by-frame tokenizer for live loops: KV caches and the compiled per-frame functions.

    caches = model.init_caches(batch, capacity)            # capacity in frames
    for frame in frames:                                   # uint8 or float [batch, H, W, 3]
        latents, caches = encode_frame(model, frame, caches)   # [batch, n_latents, latent_dim]
        image, caches = decode_frame(model, latents, caches)   # float32 [batch, H, W, 3]

`encode_frame` / `decode_frame` are `Tokenizer.encode_step` / `decode_step` under `jax.jit` with
the caches donated (updated in place: never reuse the caches passed in). Cache shapes do not
depend on how many frames were seen, so each compiles once per model and input shape and dtype.
The methods themselves are plain functions, for use inside a larger jitted loop.

Each step slides the window if the cache is full (`core.transformer.make_room`: the oldest frame
leaves), runs the transformer's cached step on the new frame and commits it. Frame t of the
stream (counting from 0) takes time position t, also after the window slides. So:
- for t < capacity, frame t equals frame t of the whole-sequence `encode` / `decode`;
- always, it equals the whole-sequence `Encoder` / `Decoder` call with a sliding-window
  `time_mask` (frame i sees frame j iff i - capacity < j <= i): every time layer of frame t
  attends to the keys and values of frames t - capacity + 1 .. t, stored when those frames were
  streamed and thus computed over their own windows;
- with a single time layer that is `encode` / `decode` of the last `capacity` frames alone (RoPE
  sees only position differences); with several, older frames still reach frame t through the
  keys of the later time layers.
"""

import functools

import equinox as eqx
import jax

from kernels import KVCache


class TokenizerCaches(eqx.Module):
    """The encoder's and the decoder's KV caches (one per time layer) for `batch` streams."""

    encoder: tuple[KVCache, ...]
    decoder: tuple[KVCache, ...]
    batch: int = eqx.field(static=True)
    capacity: int = eqx.field(static=True)  # frames

    def check_batch(self, batch: int, what: str):
        if batch != self.batch:
            raise ValueError(f"{what} has batch {batch}, but the caches were made for batch "
                             f"{self.batch}; call Tokenizer.init_caches({batch}, capacity).")


@functools.partial(jax.jit, donate_argnames="caches")
def encode_frame(model, frame, caches: TokenizerCaches):
    """`model.encode_step(frame, caches)` compiled, caches donated -> (latents, caches)."""
    return model.encode_step(frame, caches)


@functools.partial(jax.jit, donate_argnames="caches")
def decode_frame(model, latents, caches: TokenizerCaches):
    """`model.decode_step(latents, caches)` compiled, caches donated -> (frame, caches)."""
    return model.decode_step(latents, caches)
