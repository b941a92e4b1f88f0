"""Timing and memory helpers shared by the benchmark scripts (kernels, dynamics, launch)."""

import json
import resource
import statistics
import time

import jax


def peak_memory_mb() -> float:
    """Process peak so far: device peak_bytes_in_use where reported, else max RSS (Linux KiB)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def backward_residual_bytes(fn, diff, other) -> int:
    """Bytes of the arrays `jax.vjp(lambda d: fn(d, other), diff)` keeps from the forward pass
    for the backward one, each distinct array once and the inputs themselves left out.

    Found by tracing only (`diff`, `other`: pytrees of arrays or `jax.ShapeDtypeStruct`s), so
    it works for shapes that would not fit this machine, and it honours `jax.checkpoint`
    (a rematerialised block keeps only its inputs), which XLA:CPU's memory analysis does not.
    """
    jaxpr, shapes = jax.make_jaxpr(lambda d, o: jax.vjp(lambda x: fn(x, o), d),
                                   return_shape=True)(diff, other)
    count = len(jax.tree.leaves(shapes[1]))
    inputs = {id(v) for v in jaxpr.jaxpr.invars}
    kept = {id(v): v.aval for v in jaxpr.jaxpr.outvars[len(jaxpr.jaxpr.outvars) - count:]
            if id(v) not in inputs}
    return sum(aval.size * aval.dtype.itemsize for aval in kept.values())


def compile_timed(fn, *args, **static):
    """(compiled fn(*args) with `static` bound, seconds to trace + lower + compile, MiB/call)."""
    start = time.perf_counter()
    compiled = fn.lower(*args, **static).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return compiled, seconds, total / 2**20


def call_seconds(call, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, min) wall time of call(i) (i = call number, blocked on its output) after
    warm-up; on a shared machine the min is the better estimate of the uncontended time."""
    for i in range(warmup):
        jax.block_until_ready(call(i))
    samples = []
    for i in range(warmup, warmup + repeats):
        start = time.perf_counter()
        jax.block_until_ready(call(i))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), min(samples)


def write_rows_json(path: str | None, rows: list[dict], **extra) -> None:
    """Benchmark rows with the device and JAX version (and `extra` fields) to `path`, if any."""
    if path:
        with open(path, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "jax": jax.__version__, **extra,
                       "rows": rows}, f, indent=1)


def print_rows(rows: list[dict], columns: list[tuple[str, str, object]]) -> None:
    """A fixed-width table: each column is (header, alignment + width such as ">9" or "<8",
    the row's text: a key formatted with str, or a function of the row returning a string)."""
    cell = lambda value, spec: f"{value:{spec}}"
    print(" ".join(cell(header, spec) for header, spec, _ in columns))
    for row in rows:
        print(" ".join(cell(text(row) if callable(text) else str(row[text]), spec)
                       for _, spec, text in columns))
