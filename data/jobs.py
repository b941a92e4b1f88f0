"""Long data jobs: run over spawned worker processes, with progress lines (done/total, rate and
time left, at most every few seconds), writing into output folders that a repeated run resumes.

Output folders: a job writes only into a folder it made (recognised by the file it writes there
first) or an empty one, and holds an exclusive lock on it while it writes (`FolderLock`), so a
second job on the same folder stops at once, naming the process that holds it.
"""

import fcntl
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from data.episode import DataError


class Progress:
    """Prints `<what>: done/total (pct) rate/s, eta` to stderr as work completes."""

    def __init__(self, what: str, total: int, unit: str, every_s: float = 2.0, stream=None):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last_print = time.monotonic()

    def update(self, count: int = 1) -> None:
        """Counts finished work and prints a line when due (always after the last)."""
        self.done += count
        now = time.monotonic()
        if self.done >= self.total or now - self.last_print >= self.every_s:
            self.last_print = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / max(self.total, 1)
        print(
            f"{self.what}: {self.done}/{self.total} {self.unit} ({pct:.0f}%) "
            f"{rate:.1f} {self.unit}/s, elapsed {elapsed:.0f}s, left {left:.0f}s",
            file=self.stream,
            flush=True,
        )


def run_jobs(
    function: Callable, jobs: Sequence, num_workers: int
) -> Iterator[tuple[object, object]]:
    """Yields (job, function(job)) in job order; in this process when `num_workers` <= 1, else in
    a pool of spawned processes (spawn, not fork, so a caller that imported JAX is safe).
    `function` must be importable at module level."""
    if num_workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job, function(job)
        return
    with multiprocessing.get_context("spawn").Pool(min(num_workers, len(jobs))) as pool:
        yield from zip(jobs, pool.imap(function, jobs), strict=True)


LOCK_FILE = ".lock"  # the lock file a writer may keep in its folder (see FolderLock)


class FolderLock:
    """An exclusive lock (`fcntl.flock`) on `<folder>/.lock`, held until `release()` (or the
    process ends, however it ends). The lock file names its holder: pid, host, start time and
    command. Raises DataError naming the holder when another process has the lock."""

    def __init__(self, folder: str, advice: str = "wait for it to finish, or use another folder"):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, LOCK_FILE)
        self.file = open(self.path, "a+")  # noqa: SIM115 (held open while locked)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "a process that has not written its name yet"
            self.file.close()
            raise DataError(f"{folder} is in use by another process ({holder}; lock file "
                            f"{self.path}); {advice}") from None
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _looks_like(root: str, entries: list[str]) -> str | None:
    """The readable data format that a folder's contents look like, or None."""
    if any(os.path.isfile(os.path.join(root, split, "ep_start_end_ids.npy"))
           for split in ("training", "validation")):
        return "calvin"
    if any(e.endswith(".npz") for e in entries):
        return "episodes"
    if any(e.endswith(".mp4") for e in entries):
        return "vpt"
    return None


def check_own_folder(root: str, marker: str, writer: str, advice: str) -> None:
    """Raises DataError if `root` holds anything (besides a lock file) but not `marker`, the file
    `writer` puts there before anything else: the project writes only into folders it made, or
    empty ones. The message lists what is there and ends with `advice`."""
    if not os.path.lexists(root) or os.path.isfile(os.path.join(root, marker)):
        return
    if not os.path.isdir(root):
        raise DataError(f"{root} is a file, not a folder; {writer} writes a folder there: "
                        f"{advice}")
    entries = sorted(e for e in os.listdir(root) if e != LOCK_FILE)
    if not entries:
        return
    shown = ", ".join(e + "/" * os.path.isdir(os.path.join(root, e)) for e in entries[:4])
    more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
    raise DataError(f"{root} is not empty (it holds {shown}{more}) and {writer} did not make it "
                    f"(no {marker}); it writes only into a new or empty folder: {advice}")


def generator_advice(root: str) -> str:
    """What to do when a generator is pointed at a folder it did not make: read it as the
    format it looks like, or choose another path."""
    entries = os.listdir(root) if os.path.isdir(root) else []
    found = _looks_like(root, entries)
    if found:
        read = (f"it looks like {found!r} data; to read it, give its format "
                f"(--config.data.format={found}, or --format={found} for python -m data.prepare)")
    else:
        read = ("to read your own data there, give its format (--config.data.format=calvin, "
                "episodes or vpt)")
    return f"{read}, or point the generator at a new folder"


def claim_folder(root: str, settings_file: str, settings: dict) -> None:
    """Makes `root` the output folder of a resumable generator run with `settings` (JSON values),
    recorded in `root/settings_file`. Raises DataError if an earlier run there used other ones,
    or if `root` is a non-empty folder that no generator made (`check_own_folder`)."""
    path = os.path.join(root, settings_file)
    if os.path.exists(path):
        with open(path) as f:
            try:
                recorded = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON ({e}); it records the settings of the "
                                "data generated there: restore it, or use a new folder") from e
            if recorded != settings:
                raise DataError(
                    f"{root} holds data generated with other settings (see {path}); use a new "
                    "folder, or delete this one to generate it again"
                )
    check_own_folder(root, settings_file, f"the {settings_file[:-5]} generator",
                     generator_advice(root))
    os.makedirs(root, exist_ok=True)
    temp = path + ".tmp"
    with open(temp, "w") as f:
        json.dump(settings, f, indent=1)
    os.replace(temp, path)
