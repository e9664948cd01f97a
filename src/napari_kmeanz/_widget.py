"""The dock widget "K-means clustering": a thin magicgui front end.

It gathers its values into a :class:`napari_kmeanz._layers.Job`, runs the job's rounds in a
napari worker thread (with napari's progress bar), and applies the layers of every round as
they come; all computation happens in the core, off the GUI thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
    Select,
    SpinBox,
)

from . import _layers

if TYPE_CHECKING:
    import napari

SAME_FOOTING = 1.0  # spatial_weight putting position on the same footing as colour
WHOLE, PER_FRAME = "whole volume", "frame by frame (shared centres)"


class KMeansWidget(Container):
    """Cluster the pixels of an image layer; adds "<name> clusters" and "<name> recoloured"."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._viewer = viewer
        self._worker = None
        self._cancelled, self._last_round = False, 0
        self.image = ComboBox(label="image", choices=self._images)
        self.channels = Select(label="more channels", choices=self._grey_partners)
        self.n_clusters = SpinBox(label="clusters (k)", value=8, min=1, max=65535)
        self.spatial_weight = FloatSlider(
            label="spatial weight", value=0.0, min=0.0, max=4.0, step=0.05
        )
        self.same_footing = PushButton(text="position as important as colour")
        self.init = ComboBox(label="init", choices=["k-means++", "random"], value="k-means++")
        self.max_iter = SpinBox(label="max rounds", value=30, min=1, max=10000)
        self.tol = FloatSpinBox(label="tolerance", value=1e-4, min=0.0, max=1.0, step=1e-5)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.mask = ComboBox(label="mask", choices=self._masks, nullable=True, value=None)
        self.stack = ComboBox(label="stack", choices=[WHOLE, PER_FRAME], value=WHOLE)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.image,
                self.channels,
                self.n_clusters,
                self.spatial_weight,
                self.same_footing,
                self.init,
                self.max_iter,
                self.tol,
                self.seed,
                self.mask,
                self.stack,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.same_footing.changed.connect(lambda: setattr(self.spatial_weight, "value", 1.0))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._update_visibility)
        viewer.layers.events.inserted.connect(self._layers_changed)
        viewer.layers.events.removed.connect(self._layers_changed)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._layers_changed()
        self._follow_active()

    # choices

    def _images(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

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

    def _masks(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Labels)]

    def _layers_changed(self, event=None):
        self.reset_choices()
        self._update_visibility()

    def _follow_active(self, event=None):
        from napari.layers import Image

        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and self._worker is None:
            self.image.value = active

    def _update_visibility(self, event=None):
        self.channels.reset_choices()
        source = self.image.value
        self.channels.visible = bool(self.channels.choices)
        self.stack.visible = source is not None and source.ndim >= 3

    # running

    def job(self) -> _layers.Job:
        """The job the widget's values describe (raises ValueError for a bad choice)."""
        return _layers.make_job(
            self.image.value,
            n_clusters=self.n_clusters.value,
            spatial_weight=self.spatial_weight.value,
            init=self.init.value,
            max_iter=self.max_iter.value,
            tol=self.tol.value,
            seed=self.seed.value,
            mask_layer=self.mask.value,
            channel_layers=list(self.channels.value),
            per_frame=self.stack.visible and self.stack.value == PER_FRAME,
        )

    def run(self):
        """Start a run in a worker thread; returns the worker, or None after a bad choice."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        if self._worker is not None:
            return None
        try:
            job = self.job()
            states = job.states()
        except (ValueError, TypeError) as err:
            show_error(str(err))
            return None
        worker = create_worker(
            _rounds,
            job,
            states,
            _progress={"total": job.kwargs["max_iter"] + 1, "desc": "k-means clustering"},
        )
        worker.yielded.connect(self._show)
        worker.errored.connect(lambda err: show_error(f"k-means failed: {err}"))
        worker.finished.connect(self._finished)
        self._worker = worker
        self._cancelled, self._last_round = False, 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running..."
        worker.start()
        return worker

    def cancel(self):
        """Stop after the round in progress; the layers keep the last complete round."""
        if self._worker is not None:
            self._cancelled = True
            self._worker.quit()

    def _show(self, update):
        state, tuples = update
        self._last_round = state.round
        if tuples:
            _layers.apply_layers(self._viewer, tuples)
        if state.done:
            result = state.result
            verdict = "converged" if result.converged else "stopped at max rounds"
            self.status.value = f"{result.n_iter} rounds ({verdict}), inertia {result.inertia:.4g}"
        else:
            self.status.value = f"round {state.round}: inertia {state.inertia_history[-1]:.4g}"

    def _finished(self):
        if self._cancelled:
            shown = f"after round {self._last_round}" if self._last_round else "before round 1"
            self.status.value = f"cancelled {shown}"
        self._worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False


def _rounds(job: _layers.Job, states):
    """Worker body: after every round, the state and the layers to show (built here)."""
    for state in states:
        yield state, _layers.result_layers(job, state)
