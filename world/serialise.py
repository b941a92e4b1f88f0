"""Model folders with named leaves: `<folder>/header.json` + `<folder>/weights.npz`.

`weights.npz` holds one plain array per parameter, named by its key path in the module
(`.transformer.blocks[0].attn.q_proj.weight`; no pickles). `header.json` holds what is needed to
rebuild the module without any other file: {"format", "version", "kind", "config" (the module's
config dataclass as JSON), "step" (training step), "weights_sha256"}. Loading matches stored
arrays to the module's leaves by name, so weights stay loadable when parameters are added later:
`strict=False` keeps the freshly initialised values of leaves the file lacks. Files are written
to a temporary name and renamed into place, weights first; the header records the weights' hash,
so a folder caught between the two renames is reported, never silently mixed.
"""

import hashlib
import json
import os

import equinox as eqx
import jax
import numpy as np

FORMAT = "dreamer4-model"
VERSION = 1
HEADER, WEIGHTS = "header.json", "weights.npz"


class ModelFileError(ValueError):
    """A model folder that cannot be loaded: the message names the file and the fix."""


def named_leaves(module: eqx.Module) -> dict[str, jax.Array]:
    """{key path: array} of every array leaf of `module`."""
    leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(module, eqx.is_array))
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _storable(leaf) -> np.ndarray:
    array = np.asarray(leaf)
    return array if array.dtype.kind in "biuf" else array.astype(np.float32)  # e.g. bfloat16


def save_module(folder: str, module: eqx.Module, *, kind: str, config: dict, step: int) -> None:
    """Writes `module`'s named leaves and a header with `kind`, `config` and `step`."""
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, WEIGHTS)
    temporary = weights + f".tmp-{os.getpid()}.npz"
    np.savez(temporary, **{name: _storable(leaf) for name, leaf in
                           named_leaves(module).items()})
    os.replace(temporary, weights)
    header = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
              "step": int(step), "weights_sha256": _sha256(weights)}
    temporary = os.path.join(folder, f"{HEADER}.tmp-{os.getpid()}")
    with open(temporary, "w") as f:
        json.dump(header, f, indent=1)
    os.replace(temporary, os.path.join(folder, HEADER))


def read_header(folder: str, *, kind: str) -> dict:
    """The header of a model folder holding a `kind` model; clear errors otherwise."""
    path = os.path.join(folder, HEADER)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: no {HEADER}; not a saved {kind} model.")
    try:
        with open(path) as f:
            header = json.load(f)
    except json.JSONDecodeError as error:
        raise ModelFileError(f"{path}: not valid JSON ({error}); save the model again.") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("kind") != kind:
        found = header if not isinstance(header, dict) else (header.get("format"),
                                                                header.get("kind"))
        raise ModelFileError(f"{path}: expected a {FORMAT!r} {kind} model, found {found!r}.")
    if header.get("version", 0) > VERSION:
        raise ModelFileError(f"{path}: model format version {header['version']} is newer than this "
                         f"code's ({VERSION}); update the code.")
    return header


def load_module(folder: str, template: eqx.Module, *, kind: str, strict: bool = True
                ) -> eqx.Module:
    """`template` (a module of the right structure) with its leaves replaced by the stored arrays
    of the same names. Stored names the template lacks and template leaves the file lacks are
    errors unless `strict=False`, which ignores the former and keeps the template's values for
    the latter. A shape mismatch is always an error."""
    header = read_header(folder, kind=kind)
    weights = os.path.join(folder, WEIGHTS)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{folder} has {HEADER} but no {WEIGHTS}; save the model again.")
    if _sha256(weights) != header["weights_sha256"]:
        raise ModelFileError(f"{weights} does not match the hash in {HEADER} (a save was cut short "
                         "or the files were mixed); save the model again.")
    with np.load(weights, allow_pickle=False) as stored_file:
        stored = {name: stored_file[name] for name in stored_file.files}
    wanted = named_leaves(template)
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    if strict and (missing or unexpected):
        raise ModelFileError(f"{weights} does not match the {kind} model: missing {missing}, "
                         f"unexpected {unexpected}. Load with strict=False to initialise the "
                         "missing parameters and ignore the unexpected ones.")
    wrong = [f"{name} stored {tuple(stored[name].shape)}, expected {tuple(wanted[name].shape)}"
             for name in sorted(set(wanted) & set(stored))
             if tuple(stored[name].shape) != tuple(wanted[name].shape)]
    if wrong:
        raise ModelFileError(f"{weights}: shapes differ from the {kind} model built from "
                         f"{HEADER}: {'; '.join(wrong)}.")

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if not eqx.is_array(leaf) or name not in stored:
            return leaf
        return jax.numpy.asarray(stored[name], dtype=leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, template)
