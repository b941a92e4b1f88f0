"""MeanFlow vs shortcut forcing on the same small problem: `python -m dynamics.compare_objectives
[--steps=500] [--seeds=0] [--json=rows.json]`.

Quality: trains the blob-motion model (`dynamics.toy`) once per objective and seed from the same
initial weights, on the same batches, with the same optimizer (AdamW 3e-3, global-norm clip 1.0)
and the shared train step: "shortcut" switches on bootstrap rows (a quarter of the batch) after
half the steps, "meanflow" uses its default fraction of d > 0 frames throughout. Reports the final
loss and flow-row MSE (means over the last 50 steps; losses of different objectives are not
comparable, flow MSE is), skipped (non-finite) steps, the largest gradient norm of the second half,
and the next-frame MSE of cached generation with K = 1 and K = 4 on held-out sequences next to the
copy-last-frame baseline.

Cost: the three train steps (shortcut without and with bootstrap rows, meanflow) on one batch,
their GFLOP from XLA's cost analysis (independent of the machine's load), and their median and
fastest wall time over `--timing_rounds` rounds after a compiling one; each round runs every
variant once, so all three see the same load on a shared machine.
"""

import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from jaxtyping import Array, Float, PRNGKeyArray

from core.training import init_state
from dynamics.actions import align_actions
from dynamics.model import Dynamics
from dynamics.objectives import OBJECTIVES
from dynamics.sampler import generate
from dynamics.toy import blob_batch, blob_config, blob_latents
from dynamics.train import loss_fn, make_train_step

_STEPS = flags.DEFINE_integer("steps", 500, "Train steps per objective.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences per batch.")
_FRAMES = flags.DEFINE_integer("frames", 6, "Frames per training and held-out sequence.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (initial weights and data) to repeat over.")
_EVAL = flags.DEFINE_integer("eval_sequences", 256, "Held-out sequences.")
_ROUNDS = flags.DEFINE_integer("timing_rounds", 30, "Interleaved timing rounds per step variant.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")

TAIL = 50  # steps averaged for the final loss


def make_step(objective: str) -> tuple[optax.GradientTransformation, Callable]:
    """The optimizer and the jitted train step of `objective` (`dynamics.train`; static:
    bootstrap_rows)."""
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3))
    return optimizer, make_train_step(optimizer, loss_fn(objective=objective))


def train(objective: str, key: PRNGKeyArray, *, steps: int, batch: int, frames: int
          ) -> tuple[Dynamics, list[dict]]:
    """The trained model and the metrics of every step."""
    k_model, k_data = jax.random.split(key)
    optimizer, step = make_step(objective)
    state = init_state(Dynamics(blob_config(), key=k_model), optimizer)
    data = jax.jit(blob_batch, static_argnums=(1, 2))
    history = []
    for i in range(steps):
        k_batch, k_step = jax.random.split(jax.random.fold_in(k_data, i))
        bootstrap = batch // 4 if objective == "shortcut" and i >= steps // 2 else 0
        state, metrics = step(state, data(k_batch, batch, frames), k_step,
                              bootstrap_rows=bootstrap)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return state.model, history


def time_steps(key: PRNGKeyArray, *, batch: int, frames: int, rounds: int) -> list[dict]:
    """GFLOP, median and fastest ms of each train-step variant, timed round-robin."""
    variants = {"shortcut": ("shortcut", 0), "shortcut+bootstrap": ("shortcut", batch // 4),
                "meanflow": ("meanflow", 0)}
    steps = {objective: make_step(objective) for objective in OBJECTIVES}
    sequences = blob_batch(key, batch, frames)
    states = {name: init_state(Dynamics(blob_config(), key=key), steps[objective][0])
              for name, (objective, _) in variants.items()}
    gflop = {name: steps[objective][1].lower(states[name], sequences, key, bootstrap_rows=rows)
             .cost_analysis()["flops"] / 1e9 for name, (objective, rows) in variants.items()}
    samples = {name: [] for name in variants}
    for r in range(rounds + 1):  # round 0 compiles
        for name, (objective, rows) in variants.items():
            start = time.perf_counter()
            states[name], metrics = steps[objective][1](states[name], sequences, key,
                                                        bootstrap_rows=rows)
            jax.block_until_ready(metrics)
            if r:
                samples[name].append((time.perf_counter() - start) * 1e3)
    return [{"variant": name, "gflop": gflop[name], "ms": statistics.median(samples[name]),
             "best_ms": min(samples[name])} for name in variants]


def next_frame_mse(model: Dynamics, latents: Float[Array, "batch time latents dim"],
                   actions: Float[Array, "batch time 2"], steps: int) -> float:
    """MSE of the last frame generated from all earlier ones with `steps` denoising steps."""
    has = jnp.ones(latents.shape[:2], bool)
    prediction = generate(model, latents[:, :-1], *align_actions(actions, has),
                          key=jax.random.key(3), steps=steps)[:, 0]
    return float(jnp.mean(jnp.square(prediction - latents[:, -1])))


def summarize(objective: str, seed: int, model: Dynamics, history: list[dict],
              held_out: tuple[Array, Array]) -> dict:
    tail = history[-TAIL:]
    latents, actions = held_out
    return {
        "objective": objective, "seed": seed, "steps": len(history),
        "final_loss": float(np.mean([h["loss"] for h in tail])),
        "final_flow_mse": float(np.mean([h["flow_mse"] for h in tail])),
        "skipped": int(history[-1]["skipped"]),
        "max_grad_norm": max(h["grad_norm"] for h in history[len(history) // 2:]),
        "mse_k1": next_frame_mse(model, latents, actions, 1),
        "mse_k4": next_frame_mse(model, latents, actions, 4),
        "copy_mse": float(jnp.mean(jnp.square(latents[:, -2] - latents[:, -1]))),
    }


def print_tables(cost: list[dict], rows: list[dict]) -> None:
    print(f"{'train step':18} {'GFLOP':>6} {'ms median':>9} {'ms best':>8}")
    for c in cost:
        print(f"{c['variant']:18} {c['gflop']:6.2f} {c['ms']:9.1f} {c['best_ms']:8.1f}")
    print(f"{'objective':9} {'seed':>4} {'loss':>7} {'flow mse':>8} {'skipped':>7} "
          f"{'max |g|':>7} {'mse K=1':>8} {'mse K=4':>8} {'copy':>7}")
    for r in rows:
        print(f"{r['objective']:9} {r['seed']:4d} {r['final_loss']:7.4f} "
              f"{r['final_flow_mse']:8.4f} {r['skipped']:7d} {r['max_grad_norm']:7.2f} "
              f"{r['mse_k1']:8.4f} {r['mse_k4']:8.4f} {r['copy_mse']:7.4f}")


def main(argv):
    del argv
    print(f"devices: {jax.devices()}  jax {jax.__version__}", flush=True)
    held_out = blob_latents(jax.random.key(99), _EVAL.value, _FRAMES.value)
    rows = []
    for seed in map(int, _SEEDS.value):
        for objective in OBJECTIVES:
            model, history = train(objective, jax.random.key(seed), steps=_STEPS.value,
                                   batch=_BATCH.value, frames=_FRAMES.value)
            rows.append(summarize(objective, seed, model, history, held_out))
            print(f"done {objective} seed {seed}", flush=True)
    cost = time_steps(jax.random.key(0), batch=_BATCH.value, frames=_FRAMES.value,
                      rounds=_ROUNDS.value)
    print_tables(cost, rows)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"device": str(jax.devices()[0]), "jax": jax.__version__, "cost": cost,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
