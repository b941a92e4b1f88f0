"""State probe: reads positions off frames, so imagined frames can be scored in centimetres.

States follow `data.episode`: float32 [..., 3 * P], xyz in metres of P points, the controlled
point (end effector) first, then the objects (blocks).

The probe is closed-form ridge regression on colour-moment features, fitted on real frames:
1. a palette of K colours, k-means (`PALETTE_ITERATIONS` rounds, seeded) on pixels sampled from
   the fitting frames;
2. per frame and palette colour k, a soft membership m_k(p) of each pixel (softmax over the
   palette of -|rgb(p) - colour_k|^2 / `TEMPERATURE`) and its moments: mass M_k = mean_p m_k(p),
   M_k * x_k and M_k * y_k (the membership-weighted mean image coordinates in [-1, 1], which are
   linear in the memberships), and the centroid x_k, y_k itself;
3. standardised features (spread at least `MIN_SCALE`, clipped to +-`CLIP`, so a frame unlike
   any real one, e.g. an untrained model's, cannot send the linear read-out to kilometres), ridge
   strength chosen from `ALPHAS` on the last fifth of the fitting clips (whole clips, so
   neighbouring frames do not leak), refitted on all of them;
4. every fitting frame is used twice: as it is and with Gaussian pixel noise of std `NOISE`
   (seeded), so the read-out cannot rest on colour differences smaller than a decoder's error.
   Without it, ridge puts large weights on the centroids of near-identical shades (the table's),
   which are stable on real frames and move on any reconstruction: on the simulator at 48x48,
   without the copies, reconstructions at 27.5 dB put the end effector 12.2 cm and the blocks
   16.8 cm off (real frames: 4.7 and 7.2 cm); with them 10.0 and 10.2 cm (real: 4.7 and 7.1).
Why this probe: an object of a distinct colour moves its colour's centroid with it, and in a
static camera position is close to linear in the image centroid, so a linear read-out of
centroids generalises to object layouts the fitting clips never showed. Ridge on downsampled
pixels (tried first) has to learn every layout: on the simulator at 48x48 with 2.5k fitting
frames it read the end effector to 6.5 cm and the blocks to 11.5 cm, this probe (16 colours)
to 4.4 and 7.3 cm. It is closed form: deterministic, seconds on a CPU, no training schedule, so
its error is a property of the data, and `probe.real_error_cm` on held-out real frames says how
far to trust it.
On blurry frames the moment features average like the pixels do, so blur pulls the read-out
toward the mean of the candidate positions instead of to an arbitrary answer.
"""

import dataclasses

import numpy as np

from data.clips import ClipStore
from data.episode import POINT_DIMS

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
VALIDATION_FRACTION = 0.2
CM_PER_M = 100.0
TEMPERATURE = 0.01  # squared RGB distance (values in [0, 1]) per unit of membership logit
PALETTE_SAMPLES, PALETTE_ITERATIONS = 20_000, 30
CHUNK = 256  # frames whose memberships are held in memory at once
MIN_SCALE = 0.01  # feature units (coordinates in [-1, 1], masses in [0, 1]): the least spread
CLIP = 10.0  # standardised features are clipped to +-CLIP
NOISE = 0.03  # std of the pixel noise (values in [0, 1]) of the fitting frames' noisy copies


def as_float(frames) -> np.ndarray:
    """uint8 frames -> float64 in [0, 1]; float frames as float64."""
    frames = np.asarray(frames)
    return frames / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float64)


def fit_palette(frames, colours: int, *, seed: int = 0) -> np.ndarray:
    """[colours, 3]: k-means centres of pixels sampled (seeded) from frames [..., H, W, 3]."""
    rng = np.random.default_rng(seed)
    pixels = as_float(frames).reshape(-1, 3)
    pixels = pixels[rng.choice(len(pixels), min(PALETTE_SAMPLES, len(pixels)), replace=False)]
    centres = pixels[rng.choice(len(pixels), min(colours, len(pixels)), replace=False)]
    for _ in range(PALETTE_ITERATIONS):
        nearest = np.square(pixels[:, None] - centres[None]).sum(-1).argmin(1)
        centres = np.stack([pixels[nearest == k].mean(0) if np.any(nearest == k) else centres[k]
                            for k in range(len(centres))])
    return centres


def colour_moments(frames, palette: np.ndarray) -> np.ndarray:
    """Frames [..., H, W, 3] -> [..., 5 K] features: per palette colour the mass M, M x, M y and
    the centroid x, y (see the module docstring), computed `CHUNK` frames at a time."""
    frames = as_float(frames)
    batch, (height, width) = frames.shape[:-3], frames.shape[-3:-1]
    flat = frames.reshape(-1, height, width, 3)
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    out = []
    for start in range(0, len(flat), CHUNK):
        distance = np.square(flat[start:start + CHUNK, :, :, None] - palette).sum(-1)
        logits = -(distance - distance.min(-1, keepdims=True)) / TEMPERATURE
        member = np.exp(logits)
        member /= member.sum(-1, keepdims=True)  # [n, H, W, K]
        mass = member.mean(axis=(1, 2))
        mass_x = np.einsum("nhwk,hw->nk", member, xs) / (height * width)
        mass_y = np.einsum("nhwk,hw->nk", member, ys) / (height * width)
        safe = np.maximum(mass, 1e-6)
        out.append(np.concatenate([mass, mass_x, mass_y, mass_x / safe, mass_y / safe], axis=1))
    return np.concatenate(out).reshape(*batch, -1)


@dataclasses.dataclass(frozen=True)
class Probe:
    """states ~ clip((colour_moments(frames, palette) - mean) / scale) @ weights + bias."""

    palette: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    alpha: float

    def __call__(self, frames) -> np.ndarray:
        """Frames [..., H, W, 3] (uint8, or float in [0, 1]) -> predicted states [..., S]."""
        features = (colour_moments(frames, self.palette) - self.mean) / self.scale
        return np.clip(features, -CLIP, CLIP) @ self.weights + self.bias


def _ridge_solutions(features, targets, alphas):
    """(alpha, weights, bias) for each alpha, for features of unit scale, from one eigensolve."""
    mean, bias = features.mean(axis=0), targets.mean(axis=0)
    centred = features - mean
    values, vectors = np.linalg.eigh(centred.T @ centred)
    projected = vectors.T @ (centred.T @ (targets - bias))
    for alpha in alphas:
        weights = vectors @ (projected / (np.clip(values, 0.0, None) + alpha * len(features))
                             [:, None])
        yield alpha, weights, bias - mean @ weights


def fit_probe(frames, states, *, colours: int = 16, clip_of_frame=None, alphas=ALPHAS,
              noise: float = NOISE, seed: int = 0) -> Probe:
    """Fits the probe on frames [N, H, W, 3] and states [N, S], and on noisy copies of the frames
    (pixel noise of std `noise`; 0: none). `clip_of_frame` [N] (default: every frame its own
    clip) groups frames into clips; the clips last in that order (a fifth of them) choose the
    ridge strength, unless there is one clip or one alpha."""
    if noise < 0:
        raise ValueError(f"fit_probe: noise (the std of the copies' pixel noise) must be >= 0, "
                         f"got {noise}.")
    targets = np.asarray(states, np.float64)
    clips = np.arange(len(frames)) if clip_of_frame is None else np.asarray(clip_of_frame)
    if not len(frames) == len(targets) == len(clips):
        raise ValueError(f"fit_probe: {len(frames)} frames, {len(targets)} states and "
                         f"{len(clips)} clip ids; one of each per frame.")
    palette = fit_palette(frames, colours, seed=seed)
    raw = colour_moments(frames, palette)
    if noise > 0:
        rng, noisy = np.random.default_rng(seed), []
        for start in range(0, len(raw), CHUNK):  # one chunk of noisy frames in memory at a time
            pixels = as_float(frames[start:start + CHUNK])
            noisy.append(colour_moments(np.clip(pixels + rng.normal(0.0, noise, pixels.shape),
                                                0.0, 1.0), palette))
        raw = np.concatenate([raw, *noisy])
        targets, clips = np.concatenate([targets, targets]), np.concatenate([clips, clips])
    mean, scale = raw.mean(axis=0), np.maximum(raw.std(axis=0), MIN_SCALE)
    features = np.clip((raw - mean) / scale, -CLIP, CLIP)
    order = np.unique(clips)
    held = np.isin(clips, order[len(order) - max(1, round(VALIDATION_FRACTION * len(order))):])
    alpha = alphas[0]
    if len(alphas) > 1 and len(order) > 1:
        errors = {a: np.mean(np.square(features[held] @ w + b - targets[held]))
                  for a, w, b in _ridge_solutions(features[~held], targets[~held], alphas)}
        alpha = min(errors, key=errors.get)
    _, weights, bias = next(_ridge_solutions(features, targets, [alpha]))
    return Probe(palette, mean, scale, weights, bias, alpha)


def point_errors_cm(predicted: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Euclidean distance per point in cm: [..., 3 * P] pairs -> [..., P]."""
    difference = (np.asarray(predicted, np.float64) - np.asarray(states, np.float64))
    points = difference.reshape(*difference.shape[:-1], -1, POINT_DIMS)
    return CM_PER_M * np.linalg.norm(points, axis=-1)


def probe_metrics(probe, truth, imagined, shuffled, reconstruction, states, *,
                  context: int) -> dict:
    """Per-step errors (cm, mean over rollouts; step h = frame context + h) of the positions
    `probe` (a `Probe`, or any function of frames [..., H, W, 3] giving states [..., 3 P]) reads
    off the imagined frames against the true states, for the model, copy-last
    (the probe on the last true context frame) and shuffled actions; end effector (point 0) as
    rollout.probe_error_cm[_copy_last, _shuffled_actions], the blocks (mean over points 1..P-1,
    only when P > 1) as rollout.probe_block_error_cm[...]. probe.real_error_cm /
    probe.real_block_error_cm: the probe on the true future frames (how far to trust it);
    probe.reconstruction_error_cm: on the tokenizer's reconstructions of them.
    Frames are [rollouts, time, H, W, 3] in [0, 1]; states [rollouts, time, 3 * P]."""
    future = np.asarray(states)[:, context:]
    horizon = future.shape[1]
    last = np.asarray(truth)[:, context - 1:context]
    predictions = {
        "": probe(np.asarray(imagined)[:, context:]),
        "_copy_last": np.repeat(probe(last), horizon, axis=1),
        "_shuffled_actions": probe(np.asarray(shuffled)[:, context:]),
    }
    metrics = {}
    for suffix, predicted in predictions.items():
        errors = point_errors_cm(predicted, future)  # [rollouts, horizon, points]
        metrics[f"rollout.probe_error_cm{suffix}"] = errors[..., 0].mean(axis=0).tolist()
        if errors.shape[-1] > 1:
            metrics[f"rollout.probe_block_error_cm{suffix}"] = (
                errors[..., 1:].mean(axis=(0, 2)).tolist())
    real = point_errors_cm(probe(np.asarray(truth)[:, context:]), future)
    metrics["probe.real_error_cm"] = float(real[..., 0].mean())
    if real.shape[-1] > 1:
        metrics["probe.real_block_error_cm"] = float(real[..., 1:].mean())
    rebuilt = point_errors_cm(probe(np.asarray(reconstruction)[:, context:]), future)
    metrics["probe.reconstruction_error_cm"] = float(rebuilt[..., 0].mean())
    return metrics


def fitting_clips(clips_dir: str, *, skip_eval: int, max_frames: int) -> dict[str, np.ndarray]:
    """Real clips to fit the probe on: the eval clips after the first `skip_eval` (the scored
    ones), then training clips, until `max_frames` frames. Returns frames [N, H, W, 3] uint8,
    states [N, S], clip [N] (a clip number per frame) and the frame counts per split
    ("eval_frames", "train_frames")."""
    store = ClipStore(clips_dir)
    frames, states, clip, counts = [], [], [], {"eval": 0, "train": 0}
    taken = 0
    for split, skip in (("eval", skip_eval), ("train", 0)):
        for name, count in store.shards(split) if split in store.splits else []:
            if taken >= max_frames:
                break
            if skip >= count:
                skip -= count
                continue
            shard = store.read_shard(split, name)
            for row in range(skip, count):
                if taken >= max_frames:
                    break
                kept = min(shard["frames"].shape[1], max_frames - taken)
                frames.append(np.asarray(shard["frames"][row, :kept]))
                states.append(np.asarray(shard["states"][row, :kept]))
                clip.append(np.full(kept, len(clip)))
                counts[split] += kept
                taken += kept
            skip = 0
    if not frames:
        return {}
    return {"frames": np.concatenate(frames), "states": np.concatenate(states),
            "clip": np.concatenate(clip), "eval_frames": counts["eval"],
            "train_frames": counts["train"]}
