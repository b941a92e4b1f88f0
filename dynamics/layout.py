"""Per-frame token groups of the dynamics model, declared by name, and the masks they imply.

Every frame is one block of tokens, the groups in this order:

| group     | tokens                      | what it carries                                   |
|-----------|-----------------------------|---------------------------------------------------|
| actions   | `action_tokens`             | the action that led into the frame (or "none")    |
| shortcut  | 1                           | signal level tau and step size d                  |
| spatial   | `latent_tokens // pack`     | the (noisy) latents, read out as the prediction   |
| registers | `registers`                 | learned scratch tokens                            |
| agent     | `agent_tokens` (0 = absent) | tokens for policy, reward and value heads         |

Who reads whom within a frame (space layers): every world-model group reads every world-model
group; agent tokens read every token of their frame, and no other token reads them. Time layers
attend position-wise to earlier frames, so agent tokens also see past frames (through past agent
tokens, which read their own frames) and world-model tokens never see an agent token. Hence adding
agent tokens cannot change the world model's predictions.
"""

import dataclasses

import numpy as np
from jaxtyping import Bool

GROUPS = ("actions", "shortcut", "spatial", "registers", "agent")
WORLD_GROUPS = GROUPS[:-1]  # the groups the world model's own predictions come from


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Token counts per named group, in `GROUPS` order."""

    actions: int
    shortcut: int
    spatial: int
    registers: int
    agent: int = 0

    def __post_init__(self):
        if min(self.sizes.values()) < 0 or min(self.actions, self.shortcut, self.spatial) < 1:
            raise ValueError(f"token counts must be >= 0 (actions, shortcut, spatial >= 1), got "
                             f"{self.sizes}.")

    @property
    def sizes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in GROUPS}

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def slice(self, group: str) -> slice:
        """Where `group`'s tokens sit in a frame's block."""
        if group not in GROUPS:
            raise KeyError(f"unknown token group {group!r}; groups are {GROUPS}.")
        start = 0
        for name in GROUPS:
            if name == group:
                return slice(start, start + self.sizes[name])
            start += self.sizes[name]
        raise AssertionError("unreachable")

    def space_mask(self) -> Bool[np.ndarray, "tokens tokens"] | None:
        """[tokens, tokens], True = the query token may read the key token; None = all read all
        (no agent tokens)."""
        if not self.agent:
            return None
        is_agent = np.zeros(self.total, dtype=bool)
        is_agent[self.slice("agent")] = True
        return is_agent[:, None] | ~is_agent[None, :]
