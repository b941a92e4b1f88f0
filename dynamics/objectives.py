"""Training objectives: shortcut forcing (default) and MeanFlow, both in x-space with a ramp weight.

Conventions: signal level tau, 0 = noise and 1 = clean;
z_tau = (1 - tau) z0 + tau z1 with z0 ~ N(0, I), z1 the standardised latents
(`Dynamics.normalise`); the model predicts clean latents z1_hat.

Shortcut forcing, per frame (diffusion forcing: every frame draws its own tau and d):
- flow rows: d = d_min = 1 / k_max, loss ||z1_hat - z1||^2;
- bootstrap rows (the first `bootstrap_rows` of the batch): d = 2^i / k_max with i ~ U{1..log2
  k_max}; two half steps of the same network without gradient give the target
  z_tau + (1 - tau) sg((b1 + b2) / 2), the x-space form of (1 - tau)^2 ||v_hat - v_target||^2.
  Every frame of a row moves to the half-step point; teacher = online weights;
- tau uniform on the grid of d: {0, d, ..., 1 - d}; loss weight w(tau) = 0.9 tau + 0.1.
With `bootstrap_rows = 0` (static) the teacher passes are not traced at all.

MeanFlow (in the same tau convention): U = (z1_hat - z_tau) / (1 - tau) is the average
velocity over [tau, tau + d]; the target U + d dU/dtau (end point fixed) comes from one JVP with
tangents (v, +1, -1) on (z_tau, tau, d); frames with d = 0 reduce exactly to the flow term. The
JVP perturbs every frame's tau at once, so context tangents leak across frames (an accepted
approximation).

`image_rows` sequences are trained as separate images: their frames do not see each other and
carry no action. With `action_dropout` > 0 each frame of the other rows also loses its action
(the "no action" embedding) with that probability: the model then also predicts a frame whose
last action is unknown, the reference that action guidance (`dynamics.sampler`) steers away from.

Under diffusion forcing a frame at a low level rarely has two near-clean frames just before it
(about 1 in 25 at tau >= 0.8), yet sampling always gives it a near-clean context; in worlds with
momentum the next frame follows from the motion between the last two. Two options aim at that,
both off by default: `context_fraction` > 0 moves that share of the flow rows' frames to the
cleanest grid level 1 - 1/k_max; `twin_signal` > 0 runs every row with a context twin per frame
(`ContextTwins`, at that signal level, twice the tokens), so every frame is a target behind a
context like the one sampling commits. On reacher the twins lift the teacher-forced next frame
by 0.5-0.9 dB at equal wall time and `context_fraction` does not; on CALVIN small the twins lose
0.2 dB of rollout PSNR and 0.4 dB of action gap at equal time (BENCHMARKS.md).
`noise_fraction` > 0 moves that share of the flow rows' frames to level 0, pure noise: the only
input K = 1 sampling gives a new frame. With twins at 1.0, `noise_fraction` 0.99 and no image,
bootstrap or hidden-action rows (AdamW), the model is trained as a one-step regressor behind a
clean context: on pendulum it then predicts the next frame at 45.9 dB instead of 37.9 and follows
its actions (BENCHMARKS.md, "The dynamics trained as a one-step regressor").

Measured (`python -m dynamics.compare_objectives --seeds=0,1,2`: 500 steps on the blob toy,
batch 16, 2 CPU cores; BENCHMARKS.md): a MeanFlow step costs 1.91 GFLOP, a shortcut step 1.42
without and 1.66 with a quarter of the rows bootstrapping (about 4, 3 and 3.5 forward passes: the
JVP costs about one forward), i.e. 1.1-1.2x the shortcut step's wall time, not 3x; with half
the rows bootstrapping (the CALVIN recipe) both cost about 4 forwards. Neither
objective had a non-finite step (AdamW 3e-3, clipping at 1), but MeanFlow's gradient norms in the
second half peaked about 1.7x higher (0.51-0.59 vs 0.28-0.33). Both beat copying the last frame
(next-frame MSE 0.073): with K = 1 shortcut 0.049-0.052 vs MeanFlow 0.049-0.060, with K = 4
shortcut 0.051-0.058 vs MeanFlow 0.064-0.070. On this problem MeanFlow buys no 1-step advantage
and loses more at K = 4, so shortcut forcing stays the default.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from dynamics.model import Dynamics

OBJECTIVES = ("shortcut", "meanflow")


def ramp_weight(tau: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
    return 0.9 * tau + 0.1


def _frames(x: Float[Array, "batch time"]) -> Float[Array, "batch time 1 1"]:
    return x[:, :, None, None]


def sample_levels(key: PRNGKeyArray, batch: int, time: int, k_max: int, bootstrap_rows: int
                  ) -> tuple[Float[Array, "batch time"], Float[Array, "batch time"]]:
    """Per-frame (tau, d): d_min on flow rows, coarser powers of two on bootstrap rows."""
    k_level, k_tau = jax.random.split(key)
    levels = int(k_max).bit_length() - 1  # log2 k_max
    level = jax.random.randint(k_level, (batch, time), 1, max(levels, 1) + 1)
    is_bootstrap = jnp.arange(batch)[:, None] < bootstrap_rows
    level = jnp.where(is_bootstrap & (levels > 0), level, 0)
    d = (2.0 ** level.astype(jnp.float32)) / k_max
    steps = jnp.floor(jax.random.uniform(k_tau, (batch, time)) / d)  # uniform on {0..1/d - 1}
    return steps * d, d


def move_flow_frames(key: PRNGKeyArray, tau: Float[Array, "batch time"],
                     d: Float[Array, "batch time"], k_max: int, fraction: float, level: float
                     ) -> Float[Array, "batch time"]:
    """Each flow-row frame (d = 1 / k_max) moves to signal `level` with probability `fraction`;
    bootstrap-row frames keep their level."""
    moved = jax.random.uniform(key, tau.shape) < fraction
    return jnp.where(moved & (d <= 1.0 / k_max), level, tau)


def context_levels(key, tau, d, k_max: int, fraction: float):
    """Flow-row frames to the cleanest grid level 1 - 1 / k_max (`context_fraction`)."""
    return move_flow_frames(key, tau, d, k_max, fraction, 1.0 - 1.0 / k_max)


def noise_levels(key, tau, d, k_max: int, fraction: float):
    """Flow-row frames to level 0, pure noise: the only input that one sampling step per frame
    ever gives the model (`noise_fraction`)."""
    return move_flow_frames(key, tau, d, k_max, fraction, 0.0)


def image_rows_mask(key: PRNGKeyArray, batch: int, time: int, fraction: float
                    ) -> tuple[Bool[Array, " batch"], Bool[Array, "batch time time"]]:
    """Which rows are separate images, and the time mask that keeps their frames apart."""
    is_image = jax.random.uniform(key, (batch,)) < fraction
    eye = jnp.eye(time, dtype=bool)[None]
    return is_image, jnp.where(is_image[:, None, None], eye, jnp.ones_like(eye))


class ContextTwins(eqx.Module):
    """The model with a context twin before every frame (`twin_signal` in `dynamics_loss`).

    Frames in order [twin 0 .. twin T-1, frame 0 .. frame T-1], both copies of frame t at time
    position t: twin t sees twins 0..t (as the model sees committed context), frame t sees twins
    0..t-1 and itself (as a frame being sampled sees the cache), both within the row's
    `time_mask`. Returns the prediction for the frames and the features per group of the twins:
    each frame as committed context, what a policy acting on `prefill`'s features reads (the
    agent heads in finetuning), where a frame being predicted has not yet seen itself."""

    model: Dynamics
    twins: Float[Array, "batch time latents dim"]  # standardised twin inputs at `level`
    level: float = eqx.field(static=True)

    def __call__(self, z, tau, d, actions, has_action, *, time_mask=None):
        batch, time = tau.shape
        index = jnp.arange(time)
        allowed = (jnp.ones((batch, time, time), bool) if time_mask is None else time_mask)
        causal = (index[:, None] >= index[None, :])[None]
        before = (index[:, None] > index[None, :])[None]
        own = jnp.broadcast_to(jnp.eye(time, dtype=bool), allowed.shape)
        mask = jnp.concatenate([
            jnp.concatenate([allowed & causal, jnp.zeros_like(own)], axis=2),
            jnp.concatenate([allowed & before, own], axis=2)], axis=1)
        twice = lambda a, b: jnp.concatenate([a, b], axis=1)
        prediction, features = self.model(
            twice(self.twins, z), twice(jnp.full_like(tau, self.level), tau),
            twice(jnp.full_like(d, 1.0 / self.model.config.k_max), d), twice(actions, actions),
            twice(has_action, has_action), time_mask=mask,
            time_positions=jnp.concatenate([index, index]).astype(jnp.int32))
        return prediction[:, time:], jax.tree.map(lambda f: f[:, :time], features)


def _predict(model: Dynamics | ContextTwins, z, tau, d, actions, has_action, time_mask):
    """The clean-latent prediction alone (the loss does not use the group features)."""
    return model(z, tau, d, actions, has_action, time_mask=time_mask)[0]


def bootstrap_target(model: Dynamics | ContextTwins, z_tau, tau, d, actions, has_action, time_mask):
    """sg(z_tau + (1 - tau) (b1 + b2) / 2) from two half steps of size d / 2."""
    half = d / 2
    b1 = (_predict(model, z_tau, tau, half, actions, has_action, time_mask) - z_tau) / _frames(
        1.0 - tau)
    z_mid = z_tau + _frames(half) * b1
    b2 = (_predict(model, z_mid, tau + half, half, actions, has_action, time_mask) - z_mid
          ) / _frames(1.0 - tau - half)
    return jax.lax.stop_gradient(z_tau + _frames(1.0 - tau) * (b1 + b2) / 2)


def meanflow_prediction_and_target(model: Dynamics | ContextTwins, z_tau, tau, d, velocity, actions,
                                   has_action, time_mask):
    """(z1_hat, sg(x-space MeanFlow target)); the target is z1 wherever d = 0."""

    def average_velocity(z, tau, d):
        z1_hat = _predict(model, z, tau, d, actions, has_action, time_mask)
        return (z1_hat - z) / _frames(1.0 - tau)

    u, du_dtau = jax.jvp(average_velocity, (z_tau, tau, d),
                         (velocity, jnp.ones_like(tau), -jnp.ones_like(d)))
    u_target = velocity + _frames(d) * du_dtau
    target = jax.lax.stop_gradient(z_tau + _frames(1.0 - tau) * u_target)
    return z_tau + _frames(1.0 - tau) * u, target


def dynamics_loss(
    model: Dynamics,
    latents: Float[Array, "batch time latents dim"],
    actions: Float[Array, "batch time *action"] | Int[Array, "batch time *action"],
    has_action: Bool[Array, "batch time"],
    *,
    key: PRNGKeyArray,
    objective: str = "shortcut",
    bootstrap_rows: int = 0,
    mean_fraction: float = 0.25,
    image_fraction: float = 0.3,
    action_dropout: float = 0.0,
    context_fraction: float = 0.0,
    noise_fraction: float = 0.0,
    twin_signal: float = 0.0,
    with_features: bool = False,
    context_rows: int = 0,
    context_signal: float = 0.9,
):
    """(weighted x-space loss in standardised units, metrics); tokenizer latents, actions in the
    model convention (`align_actions`). `with_features` (shortcut only) appends the output
    features per token group of the prediction pass (what agent heads read in finetuning). The
    last `context_rows` rows have every frame at `context_signal` (d = 1 / k_max): the level of
    the frames behind a policy acting through `prefill` / `next_frame`."""
    if objective not in OBJECTIVES:
        raise ValueError(f"dynamics objective must be one of {OBJECTIVES}, got {objective!r}.")
    if with_features and objective != "shortcut":
        raise ValueError("with_features needs the shortcut objective.")
    batch, time = has_action.shape
    k_max = model.config.k_max
    latents = model.normalise(latents)
    k_levels, k_noise, k_image, k_mean, k_span = jax.random.split(key, 5)
    is_image, time_mask = image_rows_mask(k_image, batch, time, image_fraction)
    has_action = has_action & ~is_image[:, None]
    if action_dropout:  # frames trained as if their action were unknown: what guidance contrasts
        drop = jax.random.uniform(jax.random.fold_in(key, 1), (batch, time)) < action_dropout
        has_action = has_action & ~drop
    z0 = jax.random.normal(k_noise, latents.shape)
    tau, d = sample_levels(k_levels, batch, time, k_max, bootstrap_rows)
    if context_fraction:  # context-like frames: what a low-level frame needs behind it
        tau = context_levels(jax.random.fold_in(key, 2), tau, d, k_max, context_fraction)
    if noise_fraction:  # frames predicted from pure noise, as K = 1 sampling predicts every frame
        tau = noise_levels(jax.random.fold_in(key, 4), tau, d, k_max, noise_fraction)
    if context_rows:
        at_context = (jnp.arange(batch) >= batch - context_rows)[:, None]
        tau = jnp.where(at_context, context_signal, tau)
        d = jnp.where(at_context, 1.0 / k_max, d)
    if objective == "meanflow":
        use_mean = jax.random.uniform(k_mean, (batch, time)) < mean_fraction
        d = jnp.where(use_mean, jax.random.uniform(k_span, (batch, time)) * (1.0 - tau), 0.0)
    z_tau = _frames(1.0 - tau) * z0 + _frames(tau) * latents
    if twin_signal:  # every frame a target behind a context of twins (see ContextTwins)
        twins = ((1.0 - twin_signal) * jax.random.normal(jax.random.fold_in(key, 3), latents.shape)
                 + twin_signal * latents)
        network = lambda rows=slice(None): ContextTwins(model, twins[rows], twin_signal)
    else:
        network = lambda rows=slice(None): model

    if objective == "meanflow":
        prediction, target = meanflow_prediction_and_target(
            network(), z_tau, tau, d, latents - z0, actions, has_action, time_mask)
    else:
        prediction, features = network()(z_tau, tau, d, actions, has_action,
                                         time_mask=time_mask)
        target = latents
        if bootstrap_rows:
            rows = slice(0, bootstrap_rows)
            teacher = bootstrap_target(network(rows), z_tau[rows], tau[rows], d[rows],
                                       actions[rows], has_action[rows], time_mask[rows])
            target = jnp.concatenate([teacher, latents[bootstrap_rows:]], axis=0)
    per_frame = jnp.mean(jnp.square(prediction - target), axis=(2, 3))
    weighted = ramp_weight(tau) * per_frame
    loss = jnp.mean(weighted)
    flow = d <= 1.0 / k_max if objective == "shortcut" else d == 0.0
    def masked_mean(where):
        count = jnp.maximum(jnp.sum(where), 1).astype(jnp.float32)
        return jnp.sum(jnp.where(where, per_frame, 0.0)) / count

    metrics = {"loss": loss, "flow_mse": masked_mean(flow), "bootstrap_mse": masked_mean(~flow)}
    return (loss, metrics, features) if with_features else (loss, metrics)
