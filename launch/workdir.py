"""The workdir as a whole: whose it is, who is using it, and which config it was made with.

- Ownership: the main job writes only into a new or empty folder, or one that holds its
  `config.json` (an earlier run's workdir); anything else stops the run before it writes.
- Lock: a run holds an exclusive lock on `<workdir>/.lock` from before its first write to its
  end; a second run on the same workdir stops at once, naming the process that holds it.
"""

import contextlib

import jax

from data.episode import DataError
from data.jobs import FolderLock, check_own_folder

CONFIG_FILE = "config.json"


class WorkdirError(RuntimeError):
    """The workdir cannot be used as asked; the message says why and what to do."""


def check_workdir(root: str) -> None:
    """Raises WorkdirError if `root` is a non-empty folder that is not a workdir of this job."""
    try:
        check_own_folder(root, CONFIG_FILE, "the main job",
                         "choose a new or empty --workdir (or an earlier run's workdir)")
    except DataError as error:
        raise WorkdirError(str(error)) from None


@contextlib.contextmanager
def locked(root: str):
    """Holds the workdir's exclusive lock (`<workdir>/.lock`) for the body; a second run on the
    same workdir raises WorkdirError naming the process that holds it. The processes of one
    multi-host job share the workdir: only process 0 takes the lock."""
    check_workdir(root)
    if jax.process_index() != 0:
        yield
        return
    try:
        lock = FolderLock(root, "wait for it to finish, or use another --workdir")
    except DataError as error:
        raise WorkdirError(str(error)) from None
    try:
        yield
    finally:
        lock.release()
