"""The dock widget "K-means clustering": a thin magicgui front end.

It gathers its values into a :class:`napari_kmeanz._layers.Job`, runs the job's rounds (or a k
sweep) in a napari worker thread with napari's progress bar, and applies what every step
yields (layers, a plot) as it comes; all computation happens off the GUI thread, in the core
and the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Image,
    Label,
    PushButton,
    Select,
    SpinBox,
)

from . import _io, _layers, _report

if TYPE_CHECKING:
    import napari

SAME_FOOTING = 1.0  # spatial_weight putting position on the same footing as colour
PLOT_SIZE = (360, 220)  # the plots drawn in the dock widget
WHOLE, PER_FRAME = "whole volume", "frame by frame (shared centres)"


class KMeansWidget(Container):
    """Cluster the pixels of an image layer; adds "<name> clusters" and "<name> recoloured"."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._viewer = viewer
        self._worker = None
        self._cancelled, self._last_round = False, 0
        self._result = None  # the last finished run: (job, result)
        self.image = ComboBox(label="image", choices=self._images)
        self.channels = Select(label="more channels", choices=self._grey_partners)
        self.n_clusters = SpinBox(label="clusters (k)", value=8, min=1, max=65535)
        self.spatial_weight = FloatSlider(
            label="spatial weight", value=0.0, min=0.0, max=4.0, step=0.05
        )
        self.same_footing = PushButton(text="position as important as colour")
        self.color_space = ComboBox(
            label="colour space", choices=[("RGB", "rgb"), ("CIE Lab (perceptual)", "lab")]
        )
        self.init = ComboBox(label="init", choices=["k-means++", "random"], value="k-means++")
        self.max_iter = SpinBox(label="max rounds", value=30, min=1, max=10000)
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
        self.palette_path = FileEdit(label="palette PNG", mode="w", filter="*.png")
        self.save_button = PushButton(text="Save palette PNG", enabled=False)
        super().__init__(
            widgets=[
                self.image,
                self.channels,
                self.n_clusters,
                self.spatial_weight,
                self.same_footing,
                self.color_space,
                self.init,
                self.max_iter,
                self.tol,
                self.seed,
                self.mask,
                self.stack,
                self.fit_level,
                self.run_button,
                self.cancel_button,
                self.status,
                self.compression,
                self.plot,
                self.sweep_from,
                self.sweep_to,
                self.sweep_button,
                self.palette_path,
                self.save_button,
            ]
        )
        self.same_footing.changed.connect(self._same_footing)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.sweep_button.changed.connect(self.sweep)
        self.save_button.changed.connect(self.save_palette)
        self.image.changed.connect(self._update_visibility)
        viewer.layers.events.inserted.connect(self._layers_changed)
        viewer.layers.events.removed.connect(self._layers_changed)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._layers_changed()
        self._follow_active()

    # choices

    def _images(self, _widget=None):
        from napari.layers import Image as ImageLayer

        layers = self._viewer.layers
        return [(layer.name, layer) for layer in layers if isinstance(layer, ImageLayer)]

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
        if isinstance(active, ImageLayer) and self._worker is None:
            self.image.value = active

    def _update_visibility(self, event=None):
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
        return _layers.make_job(
            self.image.value,
            n_clusters=self.n_clusters.value,
            spatial_weight=self.spatial_weight.value,
            color_space=self.color_space.value,
            init=self.init.value,
            max_iter=self.max_iter.value,
            tol=self.tol.value,
            seed=self.seed.value,
            mask_layer=self.mask.value,
            channel_layers=list(self.channels.value),
            per_frame=self.stack.visible and self.stack.value == PER_FRAME,
            fit_level=self.fit_level.value,
        )

    def run(self):
        """Start a run in a worker thread; returns the worker, or None after a bad choice."""
        job = self._checked_job()
        if job is None:
            return None
        try:
            states = job.states()  # checks every parameter before any work
        except (ValueError, TypeError) as err:
            return self._refuse(err)
        total = job.kwargs["max_iter"] + 1
        return self._start(_rounds, (job, states), total, self._show)

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
        return self._start(_sweep, (job, ks), len(ks) + 1, self._show_sweep)

    def cancel(self):
        """Stop after the round in progress; the layers keep the last complete round."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def save_palette(self, path=None):
        """Save the last result as a palette PNG (cluster indices plus a palette)."""
        from napari.utils.notifications import show_info

        if self._result is None:
            return self._refuse(ValueError("Run the clustering first."))
        path = path or self.palette_path.value
        if not str(path) or str(path) == ".":
            return self._refuse(ValueError("Choose a file name for the palette PNG."))
        _, result = self._result
        labels = np.asarray(result.labels)
        if not _io.save_palette_png(path, labels, result.colors, result.dtype):
            return self._refuse(ValueError("A palette PNG holds a 2-D image of <= 255 clusters."))
        show_info(f"Saved {path}")
        return path

    def _checked_job(self):
        if self._worker is not None:
            return None
        try:
            return self.job()
        except (ValueError, TypeError) as err:
            return self._refuse(err)

    def _refuse(self, err):
        from napari.utils.notifications import show_error

        show_error(str(err))

    def _start(self, body, args, total, on_yield):
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        worker = create_worker(
            body, *args, _progress={"total": total, "desc": "k-means clustering"}
        )
        worker.yielded.connect(on_yield)
        worker.errored.connect(lambda err: show_error(f"k-means failed: {err}"))
        worker.finished.connect(self._finished)
        self._worker = worker
        self._cancelled, self._last_round = False, 0
        self.run_button.enabled = self.sweep_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running..."
        worker.start()
        return worker

    def _show(self, update):
        job, state, tuples, plot = update
        self._last_round = state.round
        if tuples:
            _layers.apply_layers(self._viewer, tuples)
        self._show_plot(plot)
        if not state.done:
            inertia = state.inertia_history[-1]
            self.status.value = f"round {state.round}: inertia {inertia:.4g}"
            return
        result = state.result
        self._result = (job, result)
        self.save_button.enabled = True
        verdict = "converged" if result.converged else "max rounds"
        self.status.value = f"{result.n_iter} rounds ({verdict}), inertia {result.inertia:.4g}"
        ratio = _report.compression(result)["ratio"]
        self.compression.value = f"indices + palette: {ratio:.1f}x smaller than raw"

    def _show_sweep(self, update):
        k, layer_tuple, plot, suggested = update
        self._last_round = k
        if layer_tuple is None:
            self.status.value = f"k sweep: k={k} done"
            return
        _layers.apply_layers(self._viewer, [layer_tuple])
        self._show_plot(plot)
        self.status.value = f"k sweep: suggested k = {suggested} (elbow)"

    def _show_plot(self, plot):
        self.plot.value = plot
        self.plot.min_height = PLOT_SIZE[1]  # the image widget takes no room by itself
        self.plot.visible = True

    def _finished(self):
        if self._cancelled:
            shown = f"after round {self._last_round}" if self._last_round else "before round 1"
            self.status.value = f"cancelled {shown}"
        self._worker = None
        self.run_button.enabled = self.sweep_button.enabled = True
        self.cancel_button.enabled = False


def _rounds(job: _layers.Job, states):
    """Worker body: after every round, the state, the layers to show and the inertia plot."""
    for state in states:
        plot = _io.rounds_plot(state.inertia_history, PLOT_SIZE)
        yield job, state, _layers.result_layers(job, state), plot


def _sweep(job: _layers.Job, ks):
    """Worker body of a k sweep: progress per k, then the sweep layer and the elbow plot."""
    results = []
    for k, result in _layers.sweep_results(job, ks):
        results.append(result)
        yield k, None, None, None
    inertias = [r.inertia for r in results]
    suggested = _report.suggest_k(ks, inertias)
    plot = _io.elbow_plot(ks, inertias, suggested, PLOT_SIZE)
    yield ks[-1], _layers.sweep_layer(job, ks, results), plot, suggested
