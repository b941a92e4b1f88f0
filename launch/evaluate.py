"""The eval stage: tokenizer quality, imagined rollouts against baselines, generation speed.

On the first `eval.rollouts` held-out clips (episodes never seen in training):
- tokenizer: PSNR / SSIM of the reconstruction of every frame of the rollout windows;
- rollouts: C = `context_frames` context frames (their latents), then H = `horizon` frames
  imagined with the KV-cached sampler (K = `sampling_steps`) from the real actions and decoded.
  Per step h: PSNR / SSIM of each imagined frame against the truth, averaged over rollouts
  (per-frame PSNR, not the PSNR of an averaged MSE, which rewards blur);
- baselines on the same frames: copy the last true context frame ("copy_last"), copy the
  tokenizer's reconstruction of it, and the model driven with actions of another rollout
  ("shuffled_actions": a world model must do worse with them); "copy_last_exact" counts, per
  step, the rollouts whose true frame equals the last context frame pixel for pixel (a static
  scene: copy-last scores the 100 dB cap there, which no model decoding latents reaches, so a
  few of them move the copy-last mean by dB);
- speed: frames/s of cached and uncached generation at batch 1 with C frames of context.
Per-frame PSNR is capped at 100 dB (identical frames), so summary.json holds finite numbers.
Writes <workdir>/eval/summary.json, side-by-side videos and the PSNR plot, and the curves plus a
sample strip (truth / reconstruction / imagination) and the rollout videos to TensorBoard;
prints a summary.
"""

import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX import SummaryWriter

from core import psnr, ssim, to_float, to_uint8
from data.clips import open_shard, read_index
from data.jobs import Progress
from dynamics import align_actions, generate, generate_uncached
from launch import report
from launch.stages import Workdir
from world import WorldModel

MAX_PSNR = 100.0  # dB; identical frames (PSNR inf) count as this, so the JSON stays finite


def eval_clips(folder: str, count: int, length: int) -> dict[str, np.ndarray]:
    """The first `count` eval clips of a clip or latent folder, cut to `length` frames."""
    index = read_index(folder)
    rows: dict[str, list] = {}
    found = 0
    for name, n in index["shards"].get("eval", []):
        if found >= count:
            break
        for key, value in open_shard(os.path.join(folder, "eval", name)).items():
            rows.setdefault(key, []).append(np.asarray(value[:, :length]))
        found += n
    if not rows:
        raise FileNotFoundError(f"{folder} has no eval clips; prepare data with eval episodes.")
    return {key: np.concatenate(value)[:count] for key, value in rows.items()}


def _batched(fn, *arrays, batch: int):
    return np.concatenate([np.asarray(fn(*(a[i:i + batch] for a in arrays)))
                           for i in range(0, len(arrays[0]), batch)])


def _generation_speed(model, latents, actions, has, *, context, frames, steps, signal):
    """Frames/s after warm-up, cached and uncached, batch 1, `context` frames of context."""
    total = context + frames
    args = (model, latents[:1, :context], actions[:1, :total], has[:1, :total])
    speeds = {}
    for name, fn, capacity in (("cached", generate, total),
                               ("uncached", generate_uncached, context + 1)):
        kw = dict(key=jax.random.key(0), steps=steps, context_signal=signal, capacity=capacity)
        jax.block_until_ready(fn(*args, **kw))  # compile
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kw))
        speeds[name] = frames / (time.perf_counter() - start)
    return speeds


def eval_stage(config, work: Workdir, mesh) -> dict:
    del mesh  # rollouts run on the default device
    ev = config.eval
    context, horizon = ev.context_frames, ev.horizon
    length = context + horizon
    clips = eval_clips(work.clips, ev.rollouts, length)
    latent_clips = eval_clips(work.latents, ev.rollouts, length)
    count = len(clips["frames"])
    world = WorldModel.load(work.root)
    tokenizer, model = world.tokenizer, world.dynamics
    truth = to_float(jnp.asarray(clips["frames"]))
    latents = jnp.asarray(latent_clips["latents"])
    actions, has = align_actions(jnp.asarray(latent_clips["actions"]),
                                 jnp.asarray(latent_clips["has_action"]))
    decode = eqx.filter_jit(lambda m, z: jnp.clip(m.decode(z), 0.0, 1.0))
    progress = Progress("[eval] rollouts", 3, "passes")
    recon = jnp.asarray(_batched(lambda z: decode(tokenizer, z), latents, batch=ev.batch))
    progress.update()

    def imagine(actions):
        def one_batch(z, a, h):
            future = generate(model, z[:, :context], a, h, key=jax.random.key(config.seed),
                              steps=ev.sampling_steps, context_signal=ev.context_signal)
            return decode(tokenizer, jnp.concatenate([z[:, :context], future], axis=1))
        return jnp.asarray(_batched(one_batch, latents, actions, has, batch=ev.batch))

    imagined = imagine(actions)
    progress.update()
    shuffled = imagine(jnp.roll(actions, 1, axis=0))
    progress.update()

    future = slice(context, length)
    capped = lambda metric, a, b: np.minimum(np.asarray(metric(a, b)), MAX_PSNR)
    per_step = lambda metric, frames: capped(metric, frames[:, future], truth[:, future]
                                             ).mean(axis=0).tolist()
    last = jnp.broadcast_to(truth[:, context - 1:context], truth[:, future].shape)
    last_recon = jnp.broadcast_to(recon[:, context - 1:context], truth[:, future].shape)
    copy = lambda metric, frames: capped(metric, frames, truth[:, future]).mean(0).tolist()
    speed = _generation_speed(model, latents, actions, has, context=context,
                              frames=ev.speed_frames, steps=ev.sampling_steps,
                              signal=ev.context_signal)
    summary = {
        "tokenizer.psnr": float(np.mean(capped(psnr, recon, truth))),
        "tokenizer.ssim": float(jnp.mean(ssim(recon, truth))),
        "rollout.psnr": per_step(psnr, imagined),
        "rollout.ssim": per_step(ssim, imagined),
        "rollout.psnr_copy_last": copy(psnr, last),
        "rollout.ssim_copy_last": copy(ssim, last),
        "rollout.psnr_copy_last_reconstruction": copy(psnr, last_recon),
        "rollout.copy_last_exact": np.all(clips["frames"][:, future] == clips["frames"][
            :, context - 1:context], axis=(2, 3, 4)).sum(axis=0).tolist(),
        "rollout.psnr_shuffled_actions": per_step(psnr, shuffled),
        "rollout.context_frames": context,
        "rollout.horizon": horizon,
        "rollout.sampling_steps": ev.sampling_steps,
        "rollout.count": count,
        "speed.frames_per_second_cached": speed["cached"],
        "speed.frames_per_second_uncached": speed["uncached"],
    }
    os.makedirs(work.eval, exist_ok=True)
    paths = [report.plot_curves(os.path.join(work.eval, "psnr_over_horizon.png"), {
        "model": summary["rollout.psnr"], "copy last frame": summary["rollout.psnr_copy_last"],
        "model, shuffled actions": summary["rollout.psnr_shuffled_actions"]}, ylabel="PSNR (dB)")]
    truth8, imagined8 = np.asarray(to_uint8(truth)), np.asarray(to_uint8(imagined))
    for i in range(min(ev.videos, count)):
        frames = report.side_by_side(truth8[i], np.concatenate([truth8[i, :context],
                                                                imagined8[i, future]]))
        paths += report.write_videos(os.path.join(work.eval, f"rollout_{i}"), frames)
    if ev.videos and not report.have_mp4_writer():
        print("[eval] note: no mp4 videos (GIF only): imageio-ffmpeg is not installed; "
              "`pip install imageio-ffmpeg` adds them")
    with open(os.path.join(work.eval, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    gifs = [path for path in paths if path.endswith(".gif")]
    _to_tensorboard(work, summary, truth8, imagined8, np.asarray(to_uint8(recon)), gifs)
    print_summary(summary, [os.path.join(work.eval, "summary.json"), *paths])
    return summary


def _to_tensorboard(work: Workdir, summary: dict, truth, imagined, recon, gifs) -> None:
    """Per-step PSNR curves, a sample strip (truth / reconstruction / imagination) and the
    side-by-side rollout videos (the GIF files `gifs`, tags eval/rollout_<i>)."""
    writer = SummaryWriter(os.path.join(work.logs, "eval"))
    for key in ("rollout.psnr", "rollout.psnr_copy_last", "rollout.psnr_shuffled_actions"):
        for step, value in enumerate(summary[key], start=1):
            writer.add_scalar(key, value, step)
    strip = np.concatenate([np.concatenate(list(rows), axis=1)
                            for rows in (truth[0], recon[0], imagined[0])], axis=0)
    writer.add_image("eval/truth_reconstruction_imagination", strip, dataformats="HWC")
    for i, path in enumerate(gifs):
        writer.file_writer.add_summary(report.gif_summary(f"eval/rollout_{i}", path), 0)
    writer.close()


def print_summary(summary: dict, paths: list[str]) -> None:
    mean = lambda key: float(np.mean(summary[key]))
    print(f"[eval] tokenizer PSNR {summary['tokenizer.psnr']:.2f} dB, SSIM "
          f"{summary['tokenizer.ssim']:.3f}")
    print(f"[eval] rollouts ({summary['rollout.count']} x {summary['rollout.horizon']} steps, "
          f"K={summary['rollout.sampling_steps']}): mean PSNR model {mean('rollout.psnr'):.2f} "
          f"dB | copy last {mean('rollout.psnr_copy_last'):.2f} | shuffled actions "
          f"{mean('rollout.psnr_shuffled_actions'):.2f}")
    exact = summary["rollout.copy_last_exact"]
    if any(exact):
        print(f"[eval] note: {sum(exact)} true future frames equal the last context frame pixel "
              f"for pixel (per step: {exact}); copy-last scores {MAX_PSNR:.0f} dB on each")
    print(f"[eval] generation: {summary['speed.frames_per_second_cached']:.1f} frames/s cached, "
          f"{summary['speed.frames_per_second_uncached']:.1f} uncached")
    for path in paths:
        print(f"[eval] wrote {path}")
