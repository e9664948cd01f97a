"""Stopping a run from another thread, and hearing how far it has got. No napari, no Qt.

A run started with ``cancel`` (anything with ``is_set()``, such as a ``threading.Event``) and
``progress`` (a callable) is *watched*: the thread that runs it, and the dask threads that run
its chunk tasks, hold its :class:`Watch` in a thread-local slot, and the kernels' loops call
:func:`checkpoint` (a dictionary look-up when nothing is watched) between their steps, a few
milliseconds apart. Once ``cancel`` is set, the next checkpoint raises :class:`Cancelled`, in
whichever thread it runs, and the run unwinds.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Seconds between two calls of a run's ``progress`` for the same stage.
PROGRESS_INTERVAL = 0.1


class Cancelled(Exception):
    """Raised inside a run whose ``cancel`` was set; the run stops where it is."""


@dataclass(eq=False)
class Watch:
    """A run's cancel flag and progress callback."""

    cancel: object | None = None
    progress: Callable[[str, int, int], None] | None = None
    _last: dict = field(default_factory=dict)

    @classmethod
    def check_arguments(cls, cancel, progress) -> Watch | None:
        """The watch of a run's ``cancel`` and ``progress`` arguments, checked (None for
        neither)."""
        if cancel is not None and not callable(getattr(cancel, "is_set", None)):
            raise TypeError(
                f"cancel must have an is_set() method (a threading.Event), got {cancel!r}."
            )
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be callable or None, got {progress!r}.")
        return None if cancel is None and progress is None else cls(cancel, progress)

    def __dask_tokenize__(self):  # a thread event cannot be hashed by dask
        return ("napari-kmeanz-watch", id(self))

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the run was cancelled")

    def report(self, stage: str, done: int, total: int) -> None:
        """Tell ``progress`` how far ``stage`` is, at most every PROGRESS_INTERVAL seconds
        (and always at its end)."""
        self.check()
        if self.progress is None:
            return
        now = time.monotonic()
        if done < total and now - self._last.get(stage, -1.0) < PROGRESS_INTERVAL:
            return
        self._last[stage] = now
        self.progress(stage, done, total)


_local = threading.local()


def current() -> Watch | None:
    """The watch of the run this thread works for, if any."""
    return getattr(_local, "watch", None)


@contextlib.contextmanager
def watching(watch: Watch | None):
    """Work for ``watch`` in this thread for the duration of the block."""
    previous = current()
    _local.watch = watch
    try:
        yield watch
    finally:
        _local.watch = previous


def checkpoint() -> None:
    """Raise :class:`Cancelled` when the run this thread works for was cancelled."""
    watch = getattr(_local, "watch", None)
    if watch is not None:
        watch.check()


def report(stage: str, done: int, total: int) -> None:
    """Report progress (and check for cancellation) for the run this thread works for."""
    watch = getattr(_local, "watch", None)
    if watch is not None:
        watch.report(stage, done, total)


def bind(task: Callable) -> Callable:
    """``task``, made to work for this thread's watch in whichever thread runs it.

    Tasks for a ``dask.distributed`` cluster are left as they are (a watch holds a thread
    event, which does not travel to other processes): there a run stops between passes.
    """
    watch = travelling()
    return task if watch is None else functools.partial(_run_watched, watch, task)


def travelling() -> Watch | None:
    """This thread's watch, where the tasks of a pass can carry it: not to the processes of
    a ``dask.distributed`` cluster."""
    watch = current()
    if watch is None or (watch.cancel is None and watch.progress is None) or _distributed():
        return None
    return watch


def _run_watched(watch: Watch, task: Callable, *args, **kwargs):
    with watching(watch):
        watch.check()
        return task(*args, **kwargs)


def _distributed() -> bool:
    if "distributed" not in sys.modules:
        return False
    try:
        sys.modules["distributed"].default_client()
    except ValueError:  # no client
        return False
    return True


def watched(states, watch: Watch):
    """The iterator ``states``, each step of it run for ``watch``."""
    while True:
        with watching(watch):
            try:
                state = next(states)
            except StopIteration:
                return
        yield state
