"""`WorldModel`: the tokenizer, the dynamics model, the action layout and the latent statistics
in one object that saves to and loads from a folder.

A saved world model is a folder with one model folder per part (`world.serialise`):

    <path>/tokenizer/header.json, weights.npz   TokenizerConfig in the header
    <path>/dynamics/header.json, weights.npz    DynamicsConfig in the header: sizes, the action
                                                layout and the latent mean/std

    <path>/sampling.json                        `Sampling`: how the dynamics model samples

A run's workdir holds the models under `<workdir>/models/` (written by the tokenizer and
dynamics stages when they finish) and the sampling settings in its config.json (`config.eval`),
so `WorldModel.load` takes either the workdir or a saved folder and needs no latent index and no
optimizer state.
"""

import dataclasses
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, UInt8

from dynamics import ActionSpec, Dynamics, DynamicsConfig
from tokenizer import Tokenizer, TokenizerConfig
from world.serialise import load_module, read_header, save_module

Frames = (UInt8[Array | np.ndarray, "batch time height width 3"]
          | Float[Array | np.ndarray, "batch time height width 3"])
MODELS = "models"  # the subfolder of a workdir that holds the finished models
PARTS = ("tokenizer", "dynamics")
SAMPLING = "sampling.json"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a dynamics model samples frames, as it was trained to: `steps` K per frame, the
    `context_signal` level committed frames are re-noised to, action `guidance` (1: none). The
    defaults suit the shortcut-forcing recipe; a model trained as a one-step regressor (the
    `small` variants) samples with K = 1 behind a clean context (signal 1.0)."""

    steps: int = 4
    context_signal: float = 0.9
    guidance: float = 1.0

    def __post_init__(self):
        if not (self.steps >= 1 and 0.0 <= self.context_signal <= 1.0 and self.guidance >= 0.0):
            raise ValueError(f"sampling needs steps >= 1, context_signal in [0, 1] and guidance "
                             f">= 0, got {self}.")

    def override(self, steps: int | None = None, context_signal: float | None = None,
                 guidance: float | None = None) -> "Sampling":
        """These settings with each argument that is not None put in place of its own."""
        given = dict(steps=steps, context_signal=context_signal, guidance=guidance)
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})


def read_sampling(path: str) -> Sampling:
    """`<path>/sampling.json` (a saved world model), else the `eval` section of `<path>/config.json`
    (a run's workdir), else the defaults."""
    try:
        with open(os.path.join(path, SAMPLING)) as f:
            return Sampling(**json.load(f))
    except FileNotFoundError:
        pass
    except (ValueError, TypeError) as error:
        raise ValueError(f"{os.path.join(path, SAMPLING)}: not a sampling file ({error}); write "
                         "it again with WorldModel.save, or delete it for the defaults.") from None
    try:
        with open(os.path.join(path, "config.json")) as f:
            ev = json.load(f)["eval"]
        return Sampling(steps=int(ev["sampling_steps"]),
                        context_signal=float(ev.get("context_signal", 0.9)),
                        guidance=float(ev.get("action_guidance", 1.0)))
    except (OSError, KeyError, ValueError, TypeError):
        return Sampling()


def config_to_json(config) -> dict:
    """A config dataclass (nested dataclasses included) as JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _known(cls, fields: dict, where: str) -> dict:
    """`fields` checked against `cls`'s, JSON lists back to tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; the model was saved "
                         "by a newer version of this code.")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}


def tokenizer_config_from_json(fields: dict, where: str = "header") -> TokenizerConfig:
    return TokenizerConfig(**_known(TokenizerConfig, fields, where))


def dynamics_config_from_json(fields: dict, where: str = "header") -> DynamicsConfig:
    fields = dict(_known(DynamicsConfig, fields, where))
    action = dict(fields["action"])
    action["classes"] = tuple(action.get("classes", ()))
    fields["action"] = ActionSpec(**action)
    return DynamicsConfig(**fields)


def save_part(folder: str, model: Tokenizer | Dynamics, *, step: int) -> None:
    """Saves a trained tokenizer or dynamics model as a self-describing model folder."""
    kind = "tokenizer" if isinstance(model, Tokenizer) else "dynamics"
    save_module(folder, model, kind=kind, config=config_to_json(model.config), step=step)


def load_tokenizer(folder: str, *, strict: bool = True) -> Tokenizer:
    config = tokenizer_config_from_json(read_header(folder, kind="tokenizer")["config"], folder)
    template = Tokenizer(config, key=jax.random.key(0))
    return load_module(folder, template, kind="tokenizer", strict=strict)


def load_dynamics(folder: str, *, strict: bool = True, **overrides) -> Dynamics:
    """The saved dynamics model; `overrides` change config fields that add parameters (e.g.
    `agent_tokens=8` with strict=False: the new parameters start freshly initialised)."""
    header = read_header(folder, kind="dynamics")
    config = dataclasses.replace(dynamics_config_from_json(header["config"], folder), **overrides)
    template = Dynamics(config, key=jax.random.key(0))
    return load_module(folder, template, kind="dynamics", strict=strict)


def model_folder(path: str, part: str) -> str:
    """Where `part` lives under a workdir (`<path>/models/<part>`) or a saved world model
    (`<path>/<part>`); a one-line error says how to write it when neither exists."""
    for folder in (os.path.join(path, MODELS, part), os.path.join(path, part)):
        if os.path.isfile(os.path.join(folder, "header.json")):
            return folder
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder (give a run's workdir or a folder "
                                "written by WorldModel.save).")
    if os.path.isdir(os.path.join(path, part)):  # a workdir with training checkpoints only
        raise FileNotFoundError(f"{path} has {part} training checkpoints but no saved {part} "
                                f"model (an older version, or the stage has not finished); "
                                f"write it with: {_rerun_command(path)}")
    if os.path.isfile(os.path.join(path, "config.json")):  # a run's workdir
        raise FileNotFoundError(f"{path} has no {part} model: train it with "
                                f"{_rerun_command(path)}")
    raise FileNotFoundError(f"{path} has no {part} model: train it first "
                            "(python launch/run.py --config=configs/<dataset>.py).")


def _rerun_command(workdir: str) -> str:
    name, variant = "<dataset>", "<variant>"
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            config = json.load(f)
        name, variant = config["name"], config["variant"]
    except (OSError, KeyError, ValueError):
        pass
    return (f"python launch/run.py --config=configs/{name}.py:{variant} --workdir={workdir} "
            "--config.stages=tokenizer,dynamics (finished stages are not retrained)")


@eqx.filter_jit
def _encode(tokenizer: Tokenizer, frames):
    return tokenizer.encode(frames)


@eqx.filter_jit
def _decode(tokenizer: Tokenizer, latents):
    return jnp.clip(tokenizer.decode(latents), 0.0, 1.0)


class WorldModel(eqx.Module):
    """A trained world model: `encode` frames, `decode` latents, imagine with `world.imagine`
    (which samples with `sampling` unless told otherwise)."""

    tokenizer: Tokenizer
    dynamics: Dynamics
    sampling: Sampling = eqx.field(static=True, default=Sampling())

    def __check_init__(self):
        tok, dyn = self.tokenizer.config, self.dynamics.config
        if (tok.n_latents, tok.latent_dim) != (dyn.latent_tokens, dyn.latent_dim):
            raise ValueError(f"tokenizer latents {(tok.n_latents, tok.latent_dim)} do not match "
                             f"the dynamics model's {(dyn.latent_tokens, dyn.latent_dim)}.")

    @property
    def action(self) -> ActionSpec:
        """The action layout the dynamics model was trained with."""
        return self.dynamics.config.action

    @property
    def image_size(self) -> tuple[int, int]:
        return self.tokenizer.config.image_size

    def encode(self, frames: Frames) -> Float[Array, "batch time latents dim"]:
        """Frames (uint8, or float in [0, 1]) -> tokenizer latents, causal in time."""
        return _encode(self.tokenizer, jnp.asarray(frames))

    def decode(
        self, latents: Float[Array | np.ndarray, "batch time latents dim"]
    ) -> Float[Array, "batch time height width 3"]:
        """Latents -> frames in [0, 1], causal in time."""
        return _decode(self.tokenizer, jnp.asarray(latents))

    def save(self, path: str, *, step: int = 0) -> None:
        """Writes `<path>/tokenizer`, `<path>/dynamics` and `<path>/sampling.json` (loadable by
        `WorldModel.load`)."""
        for part in PARTS:
            save_part(os.path.join(path, part), getattr(self, part), step=step)
        with open(os.path.join(path, SAMPLING), "w") as f:
            json.dump(dataclasses.asdict(self.sampling), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str, *, strict: bool = True, **dynamics_overrides) -> "WorldModel":
        """From a run's workdir or a folder written by `save`. `strict=False` (with
        `dynamics_overrides` such as agent_tokens=8) initialises parameters the saved weights
        lack and ignores saved ones the model no longer has. The sampling settings come from
        `read_sampling`."""
        tokenizer, dynamics = model_folder(path, "tokenizer"), model_folder(path, "dynamics")
        return cls(load_tokenizer(tokenizer, strict=strict),
                   load_dynamics(dynamics, strict=strict, **dynamics_overrides),
                   read_sampling(path))
