"""The evaluators the eval stage can run, by name: `config.eval.evaluators` picks them.

An evaluator is a function of the eval context (launch.evaluate.EvalContext: the config, the
held-out clips, the trained tokenizer and dynamics, decoded reconstructions and rollouts, each
loaded or computed once, on first use) returning a dict of flat metrics ("<group>.<name>": a
number or a per-step list). The eval stage merges the dicts of the chosen evaluators into
eval/summary.json; two evaluators returning the same key is an error. A new evaluator (e.g. an
agent's "returns" or "success") is one function plus one entry in `EVALUATORS`.
"""

import time
from collections.abc import Callable

import jax

from dynamics import generate, generate_uncached
from launch.metrics import rollout_metrics, tokenizer_metrics
from launch.probe import fit_probe, fitting_clips, probe_metrics


def tokenizer_evaluator(ctx) -> dict:
    """tokenizer.psnr / .ssim / .sharpness_ratio: the reconstruction of every frame of the eval
    windows."""
    return tokenizer_metrics(ctx.truth, ctx.reconstruction)


def rollout_evaluator(ctx) -> dict:
    """rollout.*: imagined rollouts against the truth and the baselines (launch.metrics)."""
    ev = ctx.config.eval
    return rollout_metrics(ctx.truth, ctx.imagined, ctx.shuffled, ctx.reconstruction,
                           context=ev.context_frames) | {
        "rollout.context_frames": ev.context_frames, "rollout.horizon": ev.horizon,
        "rollout.sampling_steps": ev.sampling_steps, "rollout.count": len(ctx.truth)}


def probe_evaluator(ctx) -> dict:
    """rollout.probe_* / probe.*: positions read off the imagined frames by a state probe fitted
    on real frames, in cm against the true states (launch/probe.py); {} when the clips carry no
    states. The probe is fitted on the eval clips that are not scored, topped up with training
    clips to `eval.probe_fit_frames` frames."""
    if ctx.states is None:
        return {}
    ev = ctx.config.eval
    fit = fitting_clips(ctx.work.clips, skip_eval=len(ctx.frames), max_frames=ev.probe_fit_frames)
    if not fit:
        return {}
    probe = fit_probe(fit["frames"], fit["states"], colours=ev.probe_colours,
                      clip_of_frame=fit["clip"])
    return probe_metrics(probe, ctx.truth, ctx.imagined, ctx.shuffled, ctx.reconstruction,
                         ctx.states, context=ev.context_frames) | {
        "probe.fit_frames_eval": fit["eval_frames"], "probe.fit_frames_train": fit["train_frames"],
        "probe.colours": ev.probe_colours, "probe.alpha": probe.alpha}


def speed_evaluator(ctx) -> dict:
    """speed.frames_per_second_{cached,uncached}: generation at batch 1 with
    `context_frames` frames of context, `speed_frames` frames, after a compiling warm-up."""
    ev = ctx.config.eval
    context, frames = ev.context_frames, ev.speed_frames
    total = context + frames
    args = (ctx.model, ctx.latents[:1, :context], ctx.actions[:1, :total],
            ctx.has_action[:1, :total])
    speeds = {}
    for name, fn, capacity in (("cached", generate, total),
                               ("uncached", generate_uncached, context + 1)):
        kw = dict(key=jax.random.key(0), steps=ev.sampling_steps,
                  context_signal=ev.context_signal, capacity=capacity)
        jax.block_until_ready(fn(*args, **kw))  # compile
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kw))
        speeds[f"speed.frames_per_second_{name}"] = frames / (time.perf_counter() - start)
    return speeds


EVALUATORS: dict[str, Callable[..., dict]] = {
    "tokenizer": tokenizer_evaluator,
    "rollout": rollout_evaluator,
    "probe": probe_evaluator,
    "speed": speed_evaluator,
}
