"""The workdir as a whole: whose it is, who is using it, and which config it was made with.

- Ownership: the main job writes only into a new or empty folder, or one that holds its
  `config.json` (an earlier run's workdir); anything else stops the run before it writes.
"""


from data.episode import DataError
from data.jobs import check_own_folder

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
