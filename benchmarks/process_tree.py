"""Peak memory and lifetime of a process and all its descendants, sampled in a thread."""

from __future__ import annotations

import threading
import time

import psutil


class TreeSampler:
    """Sample a running process tree every ``interval`` seconds until the context exits.

    Peaks, in bytes: ``peak_rss`` is the sum of the tree's resident sets (pages shared
    between processes, such as forked workers' or a memory-mapped file's, count once
    per process: an upper bound); ``peak_anon`` the same sum without file-backed and
    shared pages (RSS minus psutil's ``shared``: what cannot be dropped to the page
    cache); ``peak_process_rss`` the largest single process; ``peak_root_rss`` the
    root process alone. ``first_seen`` and ``last_seen`` (``time.perf_counter``) bound
    the life of the processes whose command line contains ``watch``, if any.
    """

    def __init__(self, root: psutil.Process, interval: float = 0.1, watch: str | None = None):
        self.root, self.interval, self.watch = root, interval, watch
        self.peak_rss = self.peak_anon = self.peak_process_rss = self.peak_root_rss = 0
        self.first_seen: float | None = None
        self.last_seen: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = anon = 0
        watched = False
        for process in tree:
            try:
                memory = process.memory_info()
                if self.watch and not watched:
                    watched = any(self.watch in part for part in process.cmdline())
            except psutil.Error:
                continue  # ended between listing and reading
            rss += memory.rss
            anon += memory.rss - getattr(memory, "shared", 0)
            self.peak_process_rss = max(self.peak_process_rss, memory.rss)
            if process.pid == self.root.pid:
                self.peak_root_rss = max(self.peak_root_rss, memory.rss)
        self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
        if watched:
            now = time.perf_counter()
            self.first_seen = self.first_seen if self.first_seen is not None else now
            self.last_seen = now
