"""The widget's run in progress, and the updates its worker thread sends to the GUI thread
(a progress step, a round, a k-sweep step, a failure), each tagged with its run so that the
updates of a run already replaced are dropped."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ._layers import Job
from ._rollback import Rollback


@dataclass(eq=False)
class Flight:
    """The run in progress: its job, how to stop it, and how far the screen has followed."""

    job: Job
    total: int
    cancel: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)  # the GUI wants a preview
    worker: object = None
    pbar: object = None
    targets: list = field(default_factory=list)
    rollback: Rollback | None = None  # what the run changed in the viewer, to undo
    shown: int = 0  # the round the layers show
    failed: Exception | None = None
    discarded: str = ""

    def __post_init__(self):
        self.ready.set()

    def progress(self, stage: str, done: int, total: int) -> None:
        """From the run's thread: a step of a long stage, queued to the GUI thread."""
        if self.worker is not None:
            self.worker.yielded.emit(Step(self, stage, done, total))


@dataclass(frozen=True, eq=False)
class Step:
    flight: Flight
    stage: str
    done: int
    total: int


@dataclass(frozen=True, eq=False)
class Failed:
    flight: Flight
    error: Exception


@dataclass(frozen=True, eq=False)
class Round:
    flight: Flight
    job: Job
    state: object
    tuples: list | None  # None: no preview this round (the screen had not shown the last)
    plot: object = None


@dataclass(frozen=True, eq=False)
class SweepStep:
    flight: Flight
    k: int
    tuple: tuple | None = None
    plot: object = None
    suggested: int | None = None
    note: str = ""  # why the sweep ended early
