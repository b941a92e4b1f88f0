"""Attention microbenchmarks: `python -m kernels.bench [--json=rows.json] [--size=full|tiny]`.

Times every backend at this project's attention shapes (space and time attention of the CoinRun,
CALVIN and a Minecraft-scale dynamics model), forward and forward+backward, bf16 and float32, and
cached decode of one frame over 16..256 cached frames. Each number is the median of device-side
timings after warm-up. Rows print as a table with time, TFLOP/s, GB/s and the ratio to the best
other backend (> 1 means this backend is faster). Decode rows also show the memory floor: bytes of
cache read divided by the copy bandwidth measured in the same run. On CPU, "pallas" runs in
interpret mode, so its times there check only that it runs; `--size=tiny` is the default there.
"""

import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from kernels.attention import BACKENDS, rope_attention
from kernels.cache import KVCache, cached_attention

_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")
_SIZE = flags.DEFINE_enum("size", None, ["full", "tiny"],
                          "Shape set; default full on GPU, tiny elsewhere.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repetitions per row (median reported).")
_BACKENDS = flags.DEFINE_list("backends", None, "Backends to time (default: all usable here).")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One attention call: `sequences` independent sequences of `length` tokens."""

    name: str
    sequences: int
    length: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool


def dynamics_shapes(name, batch, frames, tokens, heads, kv_heads, head_dim=64):
    """Space attention over batch*frames sequences of `tokens`; time over batch*tokens of frames."""
    return [Shape(f"{name}/space", batch * frames, tokens, heads, kv_heads, head_dim, False),
            Shape(f"{name}/time", batch * tokens, frames, heads, kv_heads, head_dim, True)]


def shape_set(size: str) -> list[Shape]:
    if size == "tiny":
        return dynamics_shapes("tiny", 2, 8, 24, 4, 2, 32)
    return (dynamics_shapes("coinrun", 32, 64, 22, 12, 4)  # 16 latents + act + shortcut + 4 reg
            + dynamics_shapes("calvin", 32, 96, 38, 12, 4)  # 32 latents + act + shortcut + 4 reg
            + dynamics_shapes("minecraft", 2, 192, 290, 30, 3))  # 256 + 1 + 1 + 32 registers


def time_fn(fn, *args, repeats: int) -> float:
    """Median seconds of fn(*args) after two warm-up calls."""
    for _ in range(2):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def copy_bandwidth(repeats: int) -> float:
    """Bytes/s of a large device copy (read + write), the memory-floor reference."""
    x = jnp.ones((64 * 2**20,), jnp.float32)
    seconds = time_fn(jax.jit(lambda x: x + 1.0), x, repeats=repeats)
    return 2 * x.nbytes / seconds


def attention_row(shape: Shape, backend: str, dtype, mode: str, repeats: int) -> dict:
    key = jax.random.key(0)
    kq, kk, kv = jax.random.split(key, 3)
    n, length, d = shape.sequences, shape.length, shape.head_dim
    q = jax.random.normal(kq, (n, length, shape.heads, d), dtype)
    k = jax.random.normal(kk, (n, length, shape.kv_heads, d), dtype)
    v = jax.random.normal(kv, (n, length, shape.kv_heads, d), dtype)
    pos = jnp.arange(length, dtype=jnp.int32)

    def forward(q, k, v):
        return rope_attention(q, k, v, q_positions=pos, k_positions=pos, causal=shape.causal,
                              backend=backend)

    if mode == "fwd":
        fn = jax.jit(forward)
    else:
        fn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(forward(q, k, v).astype(jnp.float32)),
                              argnums=(0, 1, 2)))
    seconds = time_fn(fn, q, k, v, repeats=repeats)
    flops = 4.0 * n * shape.heads * length * length * d * (0.5 if shape.causal else 1.0)
    flops *= 1.0 if mode == "fwd" else 3.5  # backward ~2.5x forward (recompute + 4 matmuls)
    io = (q.nbytes * 2 + k.nbytes + v.nbytes) * (1 if mode == "fwd" else 2.5)
    return {"shape": shape.name, "mode": mode, "dtype": jnp.dtype(dtype).name, "backend": backend,
            "ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "gbps": io / seconds / 1e9}


def decode_row(shape: Shape, frames: int, backend: str, dtype, repeats: int,
               bandwidth: float) -> dict:
    """One denoising step of one new frame: q/k/v of 1 token per time sequence, cache of
    `frames` committed frames (capacity 256)."""
    n, d = shape.sequences, shape.head_dim
    cache = KVCache.create(n, 256, shape.kv_heads, d, dtype)
    cache = KVCache(cache.keys, cache.values, jnp.asarray(frames, jnp.int32), cache.offset)
    q = jnp.ones((n, 1, shape.heads, d), dtype)
    kv = jnp.ones((n, 1, shape.kv_heads, d), dtype)
    step = jax.jit(lambda c, q, k, v: cached_attention(c, q, k, v, backend=backend),
                   donate_argnums=0)

    def run(cache):
        for _ in range(2):
            _, cache = step(cache, q, kv, kv)
        jax.block_until_ready(cache)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            out, cache = step(cache, q, kv, kv)
            jax.block_until_ready(out)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    seconds = run(cache)
    cache_bytes = 2 * n * (frames + 1) * shape.kv_heads * d * jnp.dtype(dtype).itemsize
    return {"shape": f"{shape.name}/decode@{frames}", "mode": "decode",
            "dtype": jnp.dtype(dtype).name, "backend": backend, "ms": seconds * 1e3,
            "tflops": 4.0 * n * shape.heads * (frames + 1) * d / seconds / 1e12,
            "gbps": cache_bytes / seconds / 1e9, "floor_ms": cache_bytes / bandwidth * 1e3}


def usable_backends() -> list[str]:
    if _BACKENDS.value:
        return _BACKENDS.value
    return list(BACKENDS) if jax.default_backend() == "gpu" else ["xla", "pallas"]


def add_ratios(rows: list[dict]) -> None:
    """ratio = best time of the other backends at the same row / this backend's time."""
    for row in rows:
        others = [r["ms"] for r in rows if r is not row and r["backend"] != row["backend"] and
                  all(r[f] == row[f] for f in ("shape", "mode", "dtype"))]
        row["ratio"] = min(others) / row["ms"] if others else float("nan")


def print_table(rows: list[dict]) -> None:
    header = (f"{'shape':28} {'mode':6} {'dtype':8} {'backend':7} {'ms':>9} {'TFLOP/s':>8} "
              f"{'GB/s':>8} {'ratio':>6} {'floor_ms':>8}")
    print(header)
    for r in rows:
        print(f"{r['shape']:28} {r['mode']:6} {r['dtype']:8} {r['backend']:7} {r['ms']:9.3f} "
              f"{r['tflops']:8.2f} {r['gbps']:8.1f} {r['ratio']:6.2f} "
              f"{r.get('floor_ms', float('nan')):8.3f}")


def main(argv):
    del argv
    size = _SIZE.value or ("full" if jax.default_backend() == "gpu" else "tiny")
    print(f"devices: {jax.devices()}  jax {jax.__version__}  size={size}", flush=True)
    repeats = _REPEATS.value
    bandwidth = copy_bandwidth(repeats)
    print(f"measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s", flush=True)
    rows = []
    dtypes = [jnp.bfloat16, jnp.float32]
    for shape in shape_set(size):
        for mode in ("fwd", "fwd+bwd"):
            for dtype in dtypes:
                for backend in usable_backends():
                    try:
                        rows.append(attention_row(shape, backend, dtype, mode, repeats))
                    except Exception as error:  # e.g. cudnn without soft-cap support
                        print(f"skip {shape.name} {mode} {backend}: {error}".splitlines()[0])
        if shape.causal:
            for frames in (16, 64, 128, 255):
                for backend in usable_backends():
                    if backend != "cudnn":
                        rows.append(decode_row(shape, frames, backend, dtypes[0], repeats,
                                               bandwidth))
        print(f"done {shape.name}", flush=True)
    add_ratios(rows)
    print_table(rows)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "jax": jax.__version__, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    app.run(main)
