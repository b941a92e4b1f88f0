"""Long data jobs: run over spawned worker processes, with progress lines (done/total, rate and
time left, at most every few seconds), writing into output folders that a repeated run resumes."""

import json
import multiprocessing
import os
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


def claim_folder(root: str, settings_file: str, settings: dict) -> None:
    """Makes `root` the output folder of a resumable generator run with `settings` (JSON values),
    recorded in `root/settings_file`; raises DataError if an earlier run there used other ones."""
    path = os.path.join(root, settings_file)
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f) != settings:
                raise DataError(
                    f"{root} holds data generated with other settings (see {path}); use a new "
                    "folder, or delete this one to generate it again"
                )
    os.makedirs(root, exist_ok=True)
    with open(path, "w") as f:
        json.dump(settings, f, indent=1)
