"""Action encoders and the one function that aligns actions to frames.

Dataset convention (every data source): `actions[t]` is the action taken after seeing frame t;
it leads to frame t + 1. Model convention: frame t is conditioned on the action that led into it,
`actions[t - 1]`; frame 0 (and any frame whose action is unknown) gets the learned "no action"
embedding. `align_actions` is the only place where this shift happens; training, sampling and
evaluation all call it.

Action kinds:
- "continuous": float32 [..., dim] (CALVIN: 7-D relative end-effector action), linear projection;
- "discrete": int32 [...] with `classes[0]` values (CoinRun: 15), embedding lookup;
- "multipart": int32 [..., parts], part p taking `classes[p]` values (Minecraft: binary keys and
  buttons plus 121 camera classes), one embedding per part, summed.
The encoding of an action is added to a learned base embedding. Continuous actions are first
standardised per dimension with the training data's statistics when the model has them
(`DynamicsConfig.action_mean` / `action_std`), so that an action's scale in its dataset (metres,
radians, raw torques) does not decide how loudly it speaks.
"""

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from core import Embedding, Linear
from core.layers import expand_to

KINDS = ("continuous", "discrete", "multipart")


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """An action layout: `dim` (continuous) or `classes` per part (discrete, multipart)."""

    kind: str
    dim: int = 0
    classes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"action kind must be one of {KINDS}, got {self.kind!r}.")
        if self.kind == "continuous" and self.dim < 1:
            raise ValueError(f"continuous actions need dim >= 1, got {self.dim}.")
        if self.kind != "continuous" and (not self.classes or min(self.classes) < 2):
            raise ValueError(f"{self.kind} actions need classes >= 2 per part, got "
                             f"{self.classes}.")
        if self.kind == "discrete" and len(self.classes) != 1:
            raise ValueError(f"discrete actions have one part, got classes={self.classes}.")

    @classmethod
    def from_layout(cls, layout, classes: Sequence[int] = ()) -> "ActionSpec":
        """The spec of a dataset's per-step action layout (`layout.kind`, `layout.shape`, as
        `data.episode.ActionLayout` has them) and, for discrete and multi-part actions, the
        class count of each part. A continuous layout with no values (a dataset without
        actions) gets dim 1: every frame then has the "no action" embedding."""
        kind, shape = layout.kind, tuple(layout.shape)
        if kind == "continuous":
            return cls("continuous", dim=max(shape[0], 1))
        parts = 1 if kind == "discrete" else shape[0]
        if len(classes) != parts:
            raise ValueError(f"the data has {kind} actions with {parts} part(s); give one class "
                             f"count per part (got {tuple(classes)}).")
        return cls(kind, classes=tuple(classes))


def random_actions(spec: ActionSpec, batch: int, time: int, *, key: PRNGKeyArray
                   ) -> Float[Array, "batch time dim"] | Int[Array, "batch time *parts"]:
    """Uniformly random valid actions of `spec` (benchmarks and tests)."""
    if spec.kind == "continuous":
        return jax.random.uniform(key, (batch, time, spec.dim), minval=-1.0)
    highs = jnp.asarray(spec.classes, jnp.int32)
    parts = jax.random.randint(key, (batch, time, len(spec.classes)), 0, highs)
    return parts[..., 0] if spec.kind == "discrete" else parts


def align_actions(
    actions: Float[Array, "batch time *action"] | Int[Array, "batch time *action"],
    has_action: Bool[Array, "batch time"],
) -> tuple[Float[Array, "batch time *action"] | Int[Array, "batch time *action"],
           Bool[Array, "batch time"]]:
    """Dataset convention -> model convention: frame t gets actions[t - 1]; frame 0 none."""
    shifted = jnp.concatenate([jnp.zeros_like(actions[:, :1]), actions[:, :-1]], axis=1)
    known = jnp.concatenate([jnp.zeros_like(has_action[:, :1]), has_action[:, :-1]], axis=1)
    return shifted, known


class ActionEncoder(eqx.Module):
    """Model-convention actions [batch, time, ...] -> `tokens` action tokens [b, t, tokens, w]."""

    base: Float[Array, "tokens width"]
    no_action: Float[Array, "tokens width"]
    continuous: Linear | None
    parts: tuple[Embedding, ...]
    spec: ActionSpec = eqx.field(static=True)
    tokens: int = eqx.field(static=True)
    mean: tuple[float, ...] = eqx.field(static=True)
    std: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, spec: ActionSpec, width: int, *, tokens: int = 1,
                 compute_dtype: str = "float32", mean: tuple[float, ...] = (),
                 std: tuple[float, ...] = (), key: PRNGKeyArray):
        kb, kn, kc, kp = jax.random.split(key, 4)
        self.base = 0.02 * jax.random.normal(kb, (tokens, width))
        self.no_action = 0.02 * jax.random.normal(kn, (tokens, width))
        out = tokens * width
        self.continuous = (Linear(spec.dim, out, compute_dtype=compute_dtype, key=kc)
                           if spec.kind == "continuous" else None)
        self.parts = tuple(Embedding(n, out, compute_dtype=compute_dtype, key=k)
                           for n, k in zip(spec.classes, jax.random.split(kp, len(spec.classes)),
                                           strict=True))
        self.spec, self.tokens = spec, tokens
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(
        self,
        actions: Float[Array, "batch time *action"] | Int[Array, "batch time *action"],
        has_action: Bool[Array, "batch time"],
    ) -> Float[Array, "batch time tokens width"]:
        batch, time = has_action.shape
        if self.continuous is not None:
            actions = actions.astype(jnp.float32)
            if self.mean:
                mean, std = (expand_to(jnp.asarray(v), actions.ndim) for v in (self.mean, self.std))
                actions = (actions - mean) / std
            code = self.continuous(actions)
        else:
            parts = actions[..., None] if self.spec.kind == "discrete" else actions
            code = sum(emb(parts[..., p]) for p, emb in enumerate(self.parts))
        code = code.astype(jnp.float32).reshape(batch, time, self.tokens, -1)
        known = has_action[:, :, None, None]
        code = jnp.where(known, code, expand_to(self.no_action, 4))
        return code + expand_to(self.base, 4)
