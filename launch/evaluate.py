"""The eval stage: runs the evaluators named by `config.eval.evaluators` (launch/evaluators.py;
default tokenizer, rollout, speed) on the first `eval.rollouts` held-out clips (episodes never
seen in training) and merges their metrics into <workdir>/eval/summary.json (written atomically).

- tokenizer: PSNR / SSIM of the reconstruction of every frame of the rollout windows;
- rollout: C = `context_frames` context frames (their latents), then H = `horizon` frames imagined
  with the KV-cached sampler (K = `sampling_steps`) from the real actions and decoded, the cache a
  sliding window of the longest training sequence (`train.dynamics.seq_lengths`, as in the player:
  attending over more frames than training ever showed lost 0.1 dB and a third of the action gap,
  BENCHMARKS.md), `batch` rollouts at a time, batch b sampling with the key
  fold_in(key(config.seed), b) (the same keys for real and shuffled actions). Per step h: per-frame
  PSNR / SSIM of the imagined frame against the truth averaged over rollouts (this does not reward
  blur), the PSNR of the MSE averaged over rollouts (`*_mse`, which does), and the sharpness ratio
  of imagined to true frames (launch/metrics.py defines each). Baselines on the same frames: copy
  the last true context frame ("copy_last"), copy the tokenizer's reconstruction of it, and the
  model driven with actions of another rollout ("shuffled_actions": a world model must do worse
  with them); "copy_last_exact" counts, per step, the rollouts whose true frame equals the last
  context frame pixel for pixel (a static scene: copy-last scores the PSNR cap there);
- probe: where the clips carry states (data/episode.py), the centimetre error of the positions
  a probe fitted on real frames reads off the imagined frames (launch/probe.py); no keys
  otherwise;
- speed: frames/s of cached and uncached generation at batch 1 with C frames of context.
Per-frame PSNR is capped at 20 log10(255) = 48.13 dB, the PSNR of an error of one 8-bit level on
every pixel (identical frames count as the cap), so summary.json holds finite numbers.
With rollouts evaluated it also writes side-by-side videos and the PSNR / SSIM plot, and the
per-step curves plus a sample strip (truth / reconstruction / imagination) and the rollout videos
to TensorBoard; prints a summary.
"""

import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX import SummaryWriter

from core import to_float, to_uint8
from data.clips import ClipStore, write_json
from data.episode import DataError
from data.jobs import Progress
from dynamics import align_actions, generate
from launch import report, settings
from launch.evaluators import EVALUATORS
from launch.metrics import COPY_LAST, COPY_LAST_RECONSTRUCTION, MODEL, PSNR_CAP, SHUFFLED
from launch.stages import Workdir
from world import load_dynamics, load_tokenizer
from world.model import model_folder


def eval_clip_pairs(clips_dir: str, latents_dir: str, count: int, length: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(frame clips, latent clips): the first `count` eval clips of the latent folder and the
    frame clips with the same ids (episode, first frame), row for row, all cut to `length`
    frames. DataError if the eval split is empty or a latent clip has no frame clip."""
    latents = ClipStore(latents_dir)
    ids = latents.first_ids("eval", count)
    if not ids:
        raise DataError(f"{latents_dir}: no eval clips; prepare data with held-out episodes "
                        "(config.data.eval_fraction > 0).")
    try:
        frames = ClipStore(clips_dir).by_ids("eval", ids, length)
    except DataError as error:
        raise DataError(f"{error}, but {latents_dir} has it: the latents were encoded from "
                        f"other clips; delete {latents_dir} and run the latents stage again "
                        "(--config.stages=latents,dynamics,eval).") from error
    return frames, latents.by_ids("eval", ids, length)


decode = eqx.filter_jit(lambda tokenizer, z: jnp.clip(tokenizer.decode(z), 0.0, 1.0))
# Curve labels of the model and the baselines, by the suffix of their keys (launch/metrics.py).
LABELS = {MODEL: "model", COPY_LAST: "copy last frame",
          COPY_LAST_RECONSTRUCTION: "copy last reconstruction", SHUFFLED: "model, shuffled actions"}
STANDARD_GROUPS = ("tokenizer", "rollout", "speed", "probe")  # print_summary: a line or two each


def batched(fn, *arrays, batch: int, what: str) -> jax.Array:
    """fn(batch_index, *rows) over consecutive `batch` rows of `arrays`, concatenated."""
    starts = range(0, len(arrays[0]), batch)
    progress = Progress(f"[eval] {what}", len(starts), "batches")
    outputs = []
    for index, start in enumerate(starts):
        outputs.append(np.asarray(fn(index, *(a[start:start + batch] for a in arrays))))
        progress.update()
    return jnp.asarray(np.concatenate(outputs))


class EvalContext:
    """What evaluators read; each attribute is loaded or computed once, on first use, so an
    evaluator set that never touches e.g. the dynamics model needs no dynamics checkpoint.

    frames: uint8 [rollouts, C + H, height, width, 3], the frame clips of the first
    `eval.rollouts` eval clips of the latent folder, paired by clip id (`eval_clip_pairs`);
    states: their true states (None for sources without);
    truth: the same as float in [0, 1]; latents, actions, has_action: those latent clips (actions
    aligned to the model's convention); tokenizer, model: the trained networks; reconstruction:
    every latent decoded; imagined / shuffled: C context latents, then H frames generated from the
    real / the next rollout's actions, all decoded.
    """

    def __init__(self, config, work: Workdir, mesh):
        self.config, self.work, self.mesh = config, work, mesh
        self.context = config.eval.context_frames
        self.length = self.context + config.eval.horizon
        self.window = settings.attention_window(config)  # KV cache frames

    def computed(self, name: str) -> bool:
        """Whether attribute `name` has been loaded or computed."""
        return name in self.__dict__

    @functools.cached_property
    def _clip_pairs(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return eval_clip_pairs(self.work.clips, self.work.latents, self.config.eval.rollouts,
                               self.length)

    @property
    def frames(self) -> np.ndarray:
        return self._clip_pairs[0]["frames"]

    @property
    def states(self) -> np.ndarray | None:
        """float32 [rollouts, C + H, S] true states of the frames (data/episode.py), or None
        when the source has none."""
        return self._clip_pairs[0].get("states")

    @functools.cached_property
    def truth(self) -> jax.Array:
        return to_float(jnp.asarray(self.frames))

    @functools.cached_property
    def _latent_clips(self) -> dict[str, jax.Array]:
        clips = self._clip_pairs[1]
        actions, has = align_actions(jnp.asarray(clips["actions"]),
                                     jnp.asarray(clips["has_action"]))
        return {"latents": jnp.asarray(clips["latents"]), "actions": actions, "has_action": has}

    @property
    def latents(self) -> jax.Array:
        return self._latent_clips["latents"]

    @property
    def actions(self) -> jax.Array:
        return self._latent_clips["actions"]

    @property
    def has_action(self) -> jax.Array:
        return self._latent_clips["has_action"]

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(model_folder(self.work.root, "tokenizer"))

    @functools.cached_property
    def model(self):
        return load_dynamics(model_folder(self.work.root, "dynamics"))

    @functools.cached_property
    def reconstruction(self) -> jax.Array:
        return batched(lambda _, z: decode(self.tokenizer, z), self.latents,
                        batch=self.config.eval.batch, what="decoding the eval latents")

    @functools.cached_property
    def imagined(self) -> jax.Array:
        return self.rollouts(self.actions, what="real actions")

    @functools.cached_property
    def shuffled(self) -> jax.Array:
        return self.rollouts(self.shuffled_actions, what="shuffled actions")

    @property
    def shuffled_actions(self) -> jax.Array:
        """Each rollout gets the actions of the one before it (the first, the last one's)."""
        return jnp.roll(self.actions, 1, axis=0)

    def batch_key(self, index: int) -> jax.Array:
        """The sampling key of batch `index` of rollouts (the same for every action set)."""
        return jax.random.fold_in(jax.random.key(self.config.seed), index)

    def rollouts(self, actions: jax.Array, *, steps: int | None = None,
                 context_signal: float | None = None, what: str) -> jax.Array:
        """C context latents, then H frames generated from `actions` with `steps` sampling steps
        and `context_signal` (default: config.eval's), all decoded, `eval.batch` at a time."""
        ev, context = self.config.eval, self.context

        def one_batch(index, z, a, has):
            future = generate(self.model, z[:, :context], a, has, key=self.batch_key(index),
                              steps=steps or ev.sampling_steps, capacity=self.window,
                              context_signal=(ev.context_signal if context_signal is None
                                              else context_signal),
                              guidance=ev.action_guidance)
            return decode(self.tokenizer, jnp.concatenate([z[:, :context], future], axis=1))

        return batched(one_batch, self.latents, actions, self.has_action, batch=ev.batch,
                       what=f"rollouts ({what})")


def run_evaluators(names: list[str], ctx: EvalContext) -> dict:
    """The merged metrics of the evaluators `names` (keys of launch.evaluators.EVALUATORS)."""
    summary: dict = {}
    source: dict[str, str] = {}
    for name in names:
        metrics = EVALUATORS[name](ctx)
        clash = sorted(set(metrics) & set(summary))
        if clash:
            raise ValueError(f"launch/evaluators.py: evaluators {source[clash[0]]!r} and {name!r} "
                             f"both return {clash}; give one of them other key names.")
        summary |= metrics
        source |= dict.fromkeys(metrics, name)
    return summary


def eval_stage(config, work: Workdir, mesh) -> dict:
    ctx = EvalContext(config, work, mesh)
    summary = run_evaluators(settings.evaluators(config), ctx)
    os.makedirs(work.eval, exist_ok=True)
    paths = []
    if "rollout.psnr" in summary:
        paths.append(report.plot_curves(os.path.join(work.eval, "psnr_over_horizon.png"), {
            ylabel: {label: summary[f"rollout.{metric}{suffix}"]
                     for suffix, label in LABELS.items()}
            for metric, ylabel in (("psnr", "PSNR (dB)"), ("ssim", "SSIM"))}))
    videos = _write_videos(ctx) if ctx.computed("imagined") else []
    paths += videos
    summary_path = os.path.join(work.eval, "summary.json")
    write_json(summary_path, summary)
    _to_tensorboard(ctx, summary, [path for path in videos if path.endswith(".gif")])
    print_summary(summary, [summary_path, *paths])
    return summary


def _write_videos(ctx: EvalContext) -> list[str]:
    """Side-by-side videos (truth | context then imagination | difference) of the first
    `eval.videos` rollouts; returns the paths written."""
    videos = min(ctx.config.eval.videos, len(ctx.frames))
    imagined = np.asarray(to_uint8(ctx.imagined))
    paths = []
    for i in range(videos):
        frames = report.side_by_side(ctx.frames[i], np.concatenate(
            [ctx.frames[i, :ctx.context], imagined[i, ctx.context:]]))
        paths += report.write_videos(os.path.join(ctx.work.eval, f"rollout_{i}"), frames)
    if videos and not report.have_mp4_writer():
        print("[eval] note: no mp4 videos (GIF only): imageio-ffmpeg is not installed; "
              "`pip install imageio-ffmpeg` adds them")
    return paths


def _to_tensorboard(ctx: EvalContext, summary: dict, gifs: list[str]) -> None:
    """Every per-step curve of `summary` (tag = key, step 1..H), and with rollouts a sample
    strip (truth / reconstruction / imagination) and the side-by-side rollout videos (the GIF
    files `gifs`, tags eval/rollout_<i>)."""
    writer = SummaryWriter(os.path.join(ctx.work.logs, "eval"))
    for key, values in summary.items():
        for step, value in enumerate(values if isinstance(values, list) else [], start=1):
            if value is not None:
                writer.add_scalar(key, value, step)
    if ctx.computed("imagined"):
        rows = [np.asarray(to_uint8(x[0])) for x in (ctx.truth, ctx.reconstruction, ctx.imagined)]
        strip = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
        writer.add_image("eval/truth_reconstruction_imagination", strip, dataformats="HWC")
    for i, path in enumerate(gifs):
        writer.file_writer.add_summary(report.gif_summary(f"eval/rollout_{i}", path), 0)
    writer.close()


def print_summary(summary: dict, paths: list[str]) -> None:
    """The metrics present in `summary`, a few lines per evaluator, then the files written."""
    mean = lambda key: float(np.mean(summary[key]))
    if "tokenizer.psnr" in summary:
        sharpness = summary.get("tokenizer.sharpness_ratio")
        print(f"[eval] tokenizer PSNR {summary['tokenizer.psnr']:.2f} dB, SSIM "
              f"{summary['tokenizer.ssim']:.3f}, sharpness "
              f"{'n/a' if sharpness is None else f'{sharpness:.2f}'}")
    if "rollout.psnr" in summary:
        print(f"[eval] rollouts ({summary['rollout.count']} x {summary['rollout.horizon']} "
              f"steps, K={summary['rollout.sampling_steps']}): mean PSNR model "
              f"{mean('rollout.psnr'):.2f} dB | copy last {mean('rollout.psnr_copy_last'):.2f} | "
              f"shuffled actions {mean('rollout.psnr_shuffled_actions'):.2f}")
        print(f"[eval] PSNR of the MSE averaged over rollouts (rewards blur), mean over steps: "
              f"model {mean('rollout.psnr_mse'):.2f} dB | copy last "
              f"{mean('rollout.psnr_copy_last_mse'):.2f} | shuffled actions "
              f"{mean('rollout.psnr_shuffled_actions_mse'):.2f}")
        ratios = summary["rollout.sharpness_ratio"]
        known = [r for r in ratios if r is not None]
        show = lambda r: "n/a" if r is None else f"{r:.2f}"
        print(f"[eval] sharpness, mean |Laplacian| imagined / true (below 1: blurrier): step 1 "
              f"{show(ratios[0])}, step {len(ratios)} {show(ratios[-1])}, mean "
              f"{show(float(np.mean(known)) if known else None)}")
        exact = summary["rollout.copy_last_exact"]
        if any(exact):
            print(f"[eval] note: {sum(exact)} true future frames equal the last context frame "
                  f"pixel for pixel (per step: {exact}); copy-last scores the {PSNR_CAP:.2f} dB "
                  "cap on each")
    if "probe.real_error_cm" in summary:
        first_last = lambda key: f"{summary[key][0]:.1f} -> {summary[key][-1]:.1f}"
        print(f"[eval] state probe, end-effector error in cm, step 1 -> last: model "
              f"{first_last('rollout.probe_error_cm')} | copy last "
              f"{first_last('rollout.probe_error_cm_copy_last')} | shuffled actions "
              f"{first_last('rollout.probe_error_cm_shuffled_actions')}; the probe on real "
              f"frames {summary['probe.real_error_cm']:.1f} cm, on reconstructions "
              f"{summary['probe.reconstruction_error_cm']:.1f} cm")
        if "rollout.probe_block_error_cm" in summary:
            print(f"[eval] state probe, block error in cm, step 1 -> last: model "
                  f"{first_last('rollout.probe_block_error_cm')} | copy last "
                  f"{first_last('rollout.probe_block_error_cm_copy_last')}; the probe on real "
                  f"frames {summary['probe.real_block_error_cm']:.1f} cm")
    if "speed.frames_per_second_cached" in summary:
        print(f"[eval] generation: {summary['speed.frames_per_second_cached']:.1f} frames/s "
              f"cached, {summary['speed.frames_per_second_uncached']:.1f} uncached")
    for key, value in summary.items():
        if key.split(".")[0] not in STANDARD_GROUPS:
            print(f"[eval] {key}: {value}")
    for path in paths:
        print(f"[eval] wrote {path}")
