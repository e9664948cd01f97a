"""The dock widget "K-means clustering": a thin magicgui front end.

It gathers its values into a :class:`napari_kmeanz._layers.Job`, runs the job's rounds (or a k
sweep) in a napari worker thread with napari's progress bar, and applies what every step
yields (layers, a plot) as it comes; all computation happens off the GUI thread, in the core
and the adapter.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Image,
    Label,
    PushButton,
    Select,
    SpinBox,
)

from . import _io, _layers, _report
from ._defaults import WIDGET
from ._filters import KINDS
from ._flight import Failed, Flight, Round, Step, SweepStep
from ._jit import warm_up
from ._rollback import Rollback
from ._watch import Cancelled

if TYPE_CHECKING:
    import napari

SAME_FOOTING = 1.0  # spatial_weight putting position on the same footing as colour
MAX_SPATIAL_WEIGHT = 1e6  # the spin box's bound; the core refuses weights that overflow
PLOT_SIZE = (360, 220)  # the plots drawn in the dock widget
WHOLE, PER_FRAME = "whole volume", "frame by frame (shared centres)"


class KMeansWidget(Container):
    """Cluster the pixels of an image layer; adds "<name> clusters" and "<name> recoloured"."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._viewer = viewer
        self._flight: Flight | None = None  # the run in progress
        self._result = None  # the last finished run: (job, result)
        self._suggested = None  # the k a finished sweep suggests
        self._channels_for = None  # the source whose channel partners were chosen
        self._busy = self._end_pending = self._drain_planned = False  # see _drain
        self._queued: list = []  # steps of the worker's updates, applied one per turn
        super().__init__(widgets=self._controls())
        self._connect(viewer)
        self._layers_changed()
        self._follow_active()
        warm_up()  # the compiled kernels, on a thread: the first Run finds them loaded

    def _controls(self) -> list:
        """The widget's controls, made and kept as attributes, in their order."""
        self.image = ComboBox(label="image", choices=self._images)
        self.channels = Select(label="more channels", choices=self._grey_partners)
        self.n_clusters = SpinBox(
            label="clusters (k)", value=WIDGET["n_clusters"], min=1, max=65535
        )
        self.spatial_weight = FloatSpinBox(
            label="spatial weight", value=0.0, min=0.0, max=MAX_SPATIAL_WEIGHT, step=0.05
        )
        self.same_footing = PushButton(text="position as important as colour")
        self.color_space = ComboBox(
            label="colour space", choices=[("RGB", "rgb"), ("CIE Lab (perceptual)", "lab")]
        )
        self.sigma = FloatSpinBox(
            label="smoothing (sigma)", value=0.0, min=0.0, max=1000.0, step=0.5,
            tooltip="Gaussian scale of the value features, in world units; 0: none",
        )  # fmt: skip
        self.features = Select(
            label="features", choices=list(KINDS), value=[],
            tooltip="value features at the smoothing scale; none chosen: the values "
            "(smoothed when sigma > 0)",
        )  # fmt: skip
        self.init = ComboBox(label="init", choices=["k-means++", "random"], value="k-means++")
        self.max_iter = SpinBox(label="max rounds", value=WIDGET["max_iter"], min=1, max=10000)
        self.tol = FloatSpinBox(label="tolerance", value=1e-4, min=0.0, max=1.0, step=1e-5)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.mask = ComboBox(label="mask", choices=self._masks, nullable=True, value=None)
        self.stack = ComboBox(label="stack", choices=[WHOLE, PER_FRAME], value=WHOLE)
        self.fit_level = ComboBox(label="fit on level", choices=self._levels)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.compression = Label(value="")
        self.plot = Image(visible=False)
        self.sweep_from = SpinBox(label="sweep k from", value=2, min=1, max=65535)
        self.sweep_to = SpinBox(label="sweep k to", value=15, min=1, max=65535)
        self.sweep_button = PushButton(text="Sweep k (elbow)")
        self.use_suggested = PushButton(text="use suggested k", visible=False)
        self.palette_path = FileEdit(label="palette PNG", mode="w", filter="*.png")
        self.save_button = PushButton(text="Save palette PNG", enabled=False)
        order = """image channels n_clusters spatial_weight same_footing color_space sigma
            features init max_iter tol seed mask stack fit_level run_button cancel_button
            status compression plot sweep_from sweep_to sweep_button use_suggested
            palette_path save_button"""
        return [getattr(self, name) for name in order.split()]

    def _connect(self, viewer) -> None:
        """Buttons and viewer events to their handlers."""
        self.same_footing.changed.connect(self._same_footing)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.sweep_button.changed.connect(self.sweep)
        self.save_button.changed.connect(self.save_palette)
        self.use_suggested.changed.connect(self._use_suggested)
        self.image.changed.connect(self._update_visibility)
        viewer.layers.events.inserted.connect(self._layers_changed)
        viewer.layers.events.removed.connect(self._layers_changed)
        viewer.layers.selection.events.active.connect(self._follow_active)

    # choices

    def _images(self, _widget=None):
        return _layers.image_choices(self._viewer)

    def _grey_partners(self, _widget=None):
        source = self.image.value if hasattr(self, "image") else None
        if source is None or source.rgb or source.multiscale:
            return []
        return [
            (name, layer)
            for name, layer in self._images()
            if layer is not source
            and not layer.rgb
            and not layer.multiscale
            and not _layers.is_output(layer)
            and layer.data.shape == source.data.shape
        ]

    def _levels(self, _widget=None):
        """Levels a multiscale source can be fitted on: 'auto' or one of them."""
        source = self.image.value if hasattr(self, "image") else None
        levels = [("auto (coarse)", None)]
        if source is not None and source.multiscale:
            for i, level in enumerate(source.data):
                levels.append((f"{i}: {' x '.join(map(str, level.shape[: source.ndim]))}", i))
        return levels

    def _masks(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _layers_changed(self, event=None):
        self.reset_choices()
        self._update_visibility()

    def _follow_active(self, event=None):
        from napari.layers import Image as ImageLayer

        active = self._viewer.layers.selection.active
        if isinstance(active, ImageLayer) and self._flight is None:
            self.image.value = active

    @property
    def running(self) -> bool:
        """Whether a run or a sweep is in progress."""
        return self._flight is not None

    def _update_visibility(self, event=None):
        source = self.image.value
        if self._result is not None and self._result[0].source not in self._viewer.layers:
            self._set_result(None)  # Save palette no longer has a layer to describe
        if source is not self._channels_for:
            self._channels_for = source
            self.channels.reset_choices()
            # a multichannel file opens as one layer per channel: cluster them all by default
            self.channels.value = [
                layer for _, layer in self._grey_partners() if _layers.same_file(layer, source)
            ]
        else:
            self.channels.reset_choices()
        self.fit_level.reset_choices()
        source = self.image.value
        self.fit_level.visible = source is not None and source.multiscale
        self.channels.visible = bool(self.channels.choices)
        self.stack.visible = source is not None and source.ndim >= 3
        self.color_space.visible = source is not None and source.rgb

    def _same_footing(self, _value=None):
        self.spatial_weight.value = SAME_FOOTING

    # running

    def job(self) -> _layers.Job:
        """The job the widget's values describe (raises ValueError for a bad choice)."""
        source = self.image.value
        # the widget's state, not whether a control is on screen (a hidden dock still runs)
        chosen = {id(layer) for layer in self.channels.value}
        partners = [layer for _, layer in self._grey_partners() if id(layer) in chosen]
        return _layers.make_job(
            source,
            n_clusters=self.n_clusters.value,
            spatial_weight=self.spatial_weight.value,
            color_space=self.color_space.value,
            init=self.init.value,
            max_iter=self.max_iter.value,
            tol=self.tol.value,
            seed=self.seed.value,
            mask_layer=self.mask.value,
            channel_layers=partners,  # in the layer list's order
            per_frame=source is not None and source.ndim >= 3 and self.stack.value == PER_FRAME,
            fit_level=self.fit_level.value,
            sigma=self.sigma.value,
            features=self.features.value,
        )

    def run(self):
        """Start a run in a worker thread; returns the worker, or None after a bad choice."""
        job = self._checked_job()
        if job is None:
            return None
        flight = Flight(job, total=job.kwargs["max_iter"] + 1)  # seeding, then the rounds
        try:  # checks every parameter before any work
            states = job.states(cancel=flight.cancel, progress=flight.progress)
        except (ValueError, TypeError) as err:
            return self._refuse(err)
        flight.targets = _layers.existing_outputs(self._viewer, job)
        flight.rollback = Rollback(self._viewer)
        for stale in flight.targets[1:]:  # an earlier recoloured image: back with the result
            if stale is not None:
                flight.rollback.hide(stale)
        return self._start(flight, _rounds(job, states, flight), self._show)

    def sweep(self):
        """Cluster for every k of the sweep range: adds '<name> k sweep' and the elbow plot."""
        job = self._checked_job()
        if job is None:
            return None
        low, high = self.sweep_from.value, self.sweep_to.value
        if low > high:
            return self._refuse(ValueError(f"The sweep's k range {low}..{high} is empty."))
        try:
            for k in (low, high):  # both ends checked before any work
                _layers.iter_kmeans(job.data, **{**job.kwargs, "n_clusters": k})
        except (ValueError, TypeError) as err:
            return self._refuse(err)
        ks = list(range(low, high + 1))
        flight = Flight(job, total=len(ks) + 1)
        return self._start(flight, _sweep(job, ks, flight), self._show_sweep)

    def cancel(self):
        """Stop the run within a fraction of a second, wherever it is; the layers keep the
        last round shown, labelled as such."""
        if self._flight is not None:
            self._flight.cancel.set()
            # preview steps not applied yet are dropped: the screen keeps what it shows
            self._queued = [step for step in self._queued if not self._preview_step(step)]

    def _preview_step(self, step) -> bool:
        """Whether a queued step belongs to a round's preview (not to a finished result)."""
        if step.func == self._apply_layer:
            return bool(step.args[2][1]["metadata"][_layers.PREFIX].get("preview"))
        if step.func in (self._show, self._shown):
            update = step.args[-1]
            return isinstance(update, Round) and not update.state.done
        return False

    def save_palette(self, path=None):
        """Save the last result as a palette PNG (cluster indices plus a palette)."""
        from napari.utils.notifications import show_info

        if self._result is None:
            return self._refuse(ValueError("Run the clustering first."))
        path = Path(str(path or self.palette_path.value or ""))
        if not str(path) or str(path) == "." or path.is_dir():
            return self._refuse(ValueError("Choose a file name for the palette PNG."))
        if not path.parent.is_dir():
            return self._refuse(ValueError(f"The folder {str(path.parent)!r} does not exist."))
        if path.suffix.lower() != ".png":
            path = path.with_name(path.name + ".png")
        _, result = self._result
        labels = np.asarray(result.labels)
        try:
            saved = _io.save_palette_png(path, labels, result.colors, result.dtype)
        except OSError as err:
            return self._refuse(ValueError(f"Cannot write {str(path)!r}: {err.strerror}."))
        if not saved:
            return self._refuse(ValueError("A palette PNG holds a 2-D image of <= 255 clusters."))
        show_info(f"Saved {path}")
        return path

    def _checked_job(self):
        if self._flight is not None:
            return None
        try:
            return self.job()
        except (ValueError, TypeError) as err:
            return self._refuse(err)

    def _refuse(self, err):
        from napari.utils.notifications import show_error

        show_error(str(err))

    def _start(self, flight, body, on_yield):
        from napari.qt.threading import create_worker
        from napari.utils import progress

        worker = create_worker(lambda: (yield from body))
        flight.worker = worker
        worker.yielded.connect(lambda update: self._applying(on_yield, update))
        worker.finished.connect(self._finished)
        self._flight = flight
        self._set_result(None)  # nothing on screen describes a finished run any more
        self.run_button.enabled = self.sweep_button.enabled = False
        self.cancel_button.enabled = True
        self.use_suggested.visible = False
        self.status.value = "running..."
        worker.start()
        # napari's progress bar takes a while to make, and runs queued events (the worker's
        # first updates, even its end) as it is made: the run starts first, its updates wait
        self._busy = True
        try:
            flight.pbar = progress(total=flight.total, desc="k-means: sampling")
        finally:
            self._busy = False
            self._next_step()
        return worker

    def _set_result(self, result):
        """The finished run that the numbers, the plot and Save palette describe, or None."""
        self._result = result
        self.save_button.enabled = result is not None
        if result is None:
            self.compression.value = ""

    def _source_changed(self, flight) -> bool:
        """Stop a run whose source layer was removed, or whose data was replaced, mid-run."""
        job = flight.job
        if job.source in self._viewer.layers and job.source.data is job.source_data:
            return False
        if not flight.cancel.is_set():
            flight.cancel.set()
            flight.discarded = (
                f"The data of layer {job.source_name!r} changed during the run: its results "
                "were discarded. Run again."
            )
        return True

    def _applying(self, show, update):
        """Queue an update of the worker's; see :meth:`_drain`."""
        self._queued.append(functools.partial(show, update))
        self._schedule()

    def _schedule(self):
        from qtpy.QtCore import QTimer

        if self._queued and not self._busy and not self._drain_planned:
            self._drain_planned = True
            QTimer.singleShot(0, self._drain)

    def _drain(self):
        """Apply one queued step, each in an event-loop turn of its own, in order.

        A step adds or updates one layer at most, so the GUI is never held longer than napari
        takes for one layer. napari runs queued events inside layer updates: an update (or
        the worker's end) that comes then waits in the queue, so no stale preview lands over
        a newer one.
        """
        self._drain_planned = False
        if not self._queued:  # Cancel dropped what was planned
            self._next_step()
            return
        self._busy = True
        try:
            self._queued.pop(0)()
        finally:
            self._busy = False
            self._next_step()

    def _next_step(self):
        if self._queued:
            self._schedule()
        elif self._end_pending:
            self._end_pending = False
            self._finished()

    def _flight_of(self, update, what: str):
        """The run in progress, when ``update`` is one of its rounds (or sweep steps) to show;
        None after handling a progress step or a failure, or for another run's update."""
        flight = self._flight
        if flight is None or update.flight is not flight:
            return None
        if isinstance(update, Step):
            flight.pbar.set_description(f"{what}: {update.stage} {update.done}/{update.total}")
            self.status.value = f"{update.stage}: {update.done}/{update.total}"
            return None
        if isinstance(update, Failed):
            flight.failed = update.error
            return None
        return flight

    def _show(self, update):
        flight = self._flight_of(update, "k-means")
        if flight is None:
            return
        state = update.state
        if self._source_changed(flight):
            return
        flight.pbar.set_description(f"k-means: round {state.round}")
        _advance(flight.pbar, state.round + 1)
        if not state.done:
            inertia = state.inertia_history[-1]
            self.status.value = f"round {state.round}: inertia {inertia:.4g}"
        if not update.tuples:
            return
        steps = [
            functools.partial(self._apply_layer, flight, i, layer_tuple)
            for i, layer_tuple in enumerate(update.tuples)
        ]
        self._queued[:0] = [*steps, functools.partial(self._shown, flight, update)]

    def _apply_layer(self, flight, index: int, layer_tuple) -> None:
        if self._flight is not flight or self._source_changed(flight):
            return
        targets = flight.targets + [None] * (index + 1 - len(flight.targets))
        existing = targets[index]
        at = flight.rollback.before(existing, layer_tuple[1])
        targets[index] = _layers.apply_layers(self._viewer, [layer_tuple], [existing])[0]
        flight.rollback.after(existing, at, targets[index])
        flight.targets = targets
        if index == 0:  # the labels layer: what the screen shows now
            flight.shown = layer_tuple[1]["metadata"][_layers.PREFIX].get("round", flight.shown)

    def _shown(self, flight, update) -> None:
        """After a round's layers: the plot, the next preview, and a finished run's numbers."""
        if self._flight is not flight or self._source_changed(flight):
            return
        state = update.state
        _layers.watch_edits(flight.targets)
        self._show_plot(update.plot)
        flight.ready.set()  # the worker may build the next preview
        if not state.done:
            return
        result = state.result
        flight.pbar.total = flight.pbar.n  # converged early: the bar ends full
        self._set_result((update.job, result))
        verdict = "converged" if result.converged else "max rounds"
        rounds = f"{result.n_iter} round{'s' * (result.n_iter != 1)}"
        self.status.value = f"{rounds} ({verdict}), inertia {result.inertia:.4g}"
        ratio = _report.compression(result)["ratio"]
        self.compression.value = f"indices + palette: {ratio:.1f}x smaller than raw"

    def _show_sweep(self, update):
        flight = self._flight_of(update, "k sweep")
        if flight is None:
            return
        k, layer_tuple, plot, suggested = update.k, update.tuple, update.plot, update.suggested
        _advance(flight.pbar, flight.pbar.n + 1)
        if layer_tuple is None:
            self.status.value = f"k sweep: k={k} done"
            return
        if self._source_changed(flight):
            return
        _layers.apply_layers(self._viewer, [layer_tuple])
        self._viewer.dims.set_current_step(0, suggested)
        self._show_plot(plot)
        self._suggested = suggested
        self.use_suggested.text = f"use suggested k = {suggested}"
        self.use_suggested.visible = True
        self.status.value = f"k sweep: suggested k = {suggested} (elbow){update.note}"

    def _use_suggested(self, _value=None):
        if self._suggested is not None:
            self.n_clusters.value = self._suggested

    def _show_plot(self, plot):
        self.plot.value = plot
        self.plot.min_height = PLOT_SIZE[1]  # the image widget takes no room by itself
        self.plot.visible = True

    def _finished(self):
        if self._busy or self._queued:
            self._end_pending = True
            return
        flight, self._flight = self._flight, None
        if flight is None:
            return
        flight.pbar.close()
        self.run_button.enabled = self.sweep_button.enabled = True
        self.cancel_button.enabled = False
        if flight.rollback is not None and (flight.failed is not None or flight.discarded):
            flight.rollback.undo()  # the viewer as the run found it (see _rollback)
        if flight.failed is not None:
            self._refuse(f"k-means failed: {flight.failed}")
            self.status.value = f"failed: {flight.failed}"
            self.plot.visible = False
            self._set_result(None)
        elif flight.discarded:
            self._refuse(flight.discarded)
            self.status.value = "discarded: the source changed"
        elif flight.cancel.is_set():
            shown = f"showing round {flight.shown}" if flight.shown else "nothing shown"
            self.status.value = f"cancelled: {shown} (not a finished result)"


def _advance(pbar, n: int) -> None:
    """Move napari's progress bar to ``n`` (its ``update`` is what redraws it)."""
    n = min(n, pbar.total)
    if n > pbar.n:
        pbar.update(n - pbar.n)


def _rounds(job: _layers.Job, states, flight: Flight):
    """Worker body: after every round the state; with it, when the screen has shown the last
    one, the layers and the inertia plot (built here, off the GUI thread). Errors come back
    as one update; a cancelled run just ends."""
    try:
        for state in states:
            if state.done or flight.ready.is_set():
                flight.ready.clear()
                plot = _io.rounds_plot(state.inertia_history, PLOT_SIZE)
                yield Round(flight, job, state, _layers.result_layers(job, state), plot)
            else:
                yield Round(flight, job, state, None)
    except Cancelled:
        return
    except Exception as err:  # shown once, as the run's failure
        yield Failed(flight, err)


def _sweep(job: _layers.Job, ks, flight: Flight):
    """Worker body of a k sweep: progress per k, then the sweep layer and the elbow plot."""
    try:
        results = []
        for k, result in _layers.sweep_results(job, ks, flight.cancel):
            results.append(result)
            yield SweepStep(flight, k)
        ks, rest = ks[: len(results)], ks[len(results) :]  # a k above the distinct points
        note = f"; stopped at k={ks[-1]}, as many as the distinct values" if rest else ""
        inertias = [r.inertia for r in results]
        suggested = _report.suggest_k(ks, inertias)
        plot = _io.elbow_plot(ks, inertias, suggested, PLOT_SIZE)
        layer = _layers.sweep_layer(job, ks, results)
        yield SweepStep(flight, ks[-1], layer, plot, suggested, note)
    except Cancelled:
        return
    except Exception as err:
        yield Failed(flight, err)
