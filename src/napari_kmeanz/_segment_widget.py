"""The dock widget "Clusters to segmentation": clean a clustering, turn clusters into objects
or a mask, save, load and apply the model behind it, and fit one model on several layers.

It works on the "<name> clusters" layers of the K-means widget (their metadata holds the
model). Every step runs in a napari worker thread; its layer is added when it is done.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
from magicgui.widgets import (
    CheckBox,
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

from . import _io, _layers, _model
from ._chunked_objects import check_region_axes, planes_of, step
from ._defaults import WIDGET
from ._kmeans import kmeans
from ._many import cluster_table
from ._params import as_array
from ._result import KMeansResult, load, margins, predict
from ._segment import clean, objects

if TYPE_CHECKING:
    import napari


class SegmentWidget(Container):
    """Clean, objects, mask of chosen clusters; Save model, Load model and apply it."""

    def __init__(self, viewer: napari.viewer.Viewer):
        self._viewer = viewer
        self.clusters = ComboBox(label="clusters layer", choices=self._clusters_layers)
        self.min_size = SpinBox(label="min region size", value=50, min=0, max=10**9)
        self.radius = SpinBox(label="majority radius", value=1, min=0, max=50)
        self.clean_button = PushButton(text="Clean")
        self.chosen = Select(label="chosen clusters", choices=self._cluster_ids)
        self.pick = CheckBox(text="pick clusters by clicking them")
        self.objects_button = PushButton(text="Objects of chosen clusters")
        self.mask_button = PushButton(text="Mask of chosen clusters")
        self.uncertainty_button = PushButton(text="Uncertainty (where clusters meet)")
        self.merge_button = PushButton(text="Merge chosen clusters")
        self.fractions_button = PushButton(text="Fractions over frames")
        self.plot = Image(visible=False)
        self.model_path = FileEdit(label="model file", mode="w", filter="*.json")
        self.save_button = PushButton(text="Save model")
        self.target = ComboBox(label="apply to", choices=self._images)
        self.apply_button = PushButton(text="Load model and apply")
        self.fit_layers = Select(label="fit one model on", choices=self._images)
        self.fit_k = SpinBox(label="clusters (k)", value=WIDGET["n_clusters"], min=1, max=65535)
        self.fit_weight = FloatSpinBox(label="spatial weight", value=0.0, min=0.0, max=1e6)
        self.fit_button = PushButton(text="Fit one model on chosen layers")
        self.status = Label(value="")
        super().__init__(widgets=[
            self.clusters, self.min_size, self.radius, self.clean_button, self.chosen,
            self.pick, self.objects_button, self.mask_button, self.uncertainty_button,
            self.merge_button,
            self.fractions_button, self.plot, self.model_path,
            self.save_button,
            self.target, self.apply_button,
            self.fit_layers, self.fit_k, self.fit_weight, self.fit_button, self.status,
        ])  # fmt: skip
        self.clean_button.changed.connect(self.clean)
        self.objects_button.changed.connect(self.objects)
        self.mask_button.changed.connect(self.mask)
        self.uncertainty_button.changed.connect(self.uncertainty)
        self.merge_button.changed.connect(self.merge)
        self.fractions_button.changed.connect(self.fractions)
        self.save_button.changed.connect(self.save_model)
        self.apply_button.changed.connect(self.apply_model)
        self.fit_button.changed.connect(self.fit_several)
        self.clusters.changed.connect(self._clusters_changed)
        self.pick.changed.connect(self._follow_clicks)
        self._color_choices()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self.reset_choices)

    # choices

    def _clusters_layers(self, _widget=None):
        from napari.layers import Labels

        return [
            (layer.name, layer)
            for layer in self._viewer.layers
            if isinstance(layer, Labels) and "model" in layer.metadata.get(_layers.PREFIX, {})
        ]

    def _cluster_ids(self, _widget=None):
        layer = self.clusters.value if hasattr(self, "clusters") else None
        if layer is None:
            return []
        return list(range(1, len(layer.metadata[_layers.PREFIX]["model"]["centers"]) + 1))

    def _images(self, _widget=None):
        return _layers.image_choices(self._viewer)

    def reset_choices(self, *_):
        """New choices (napari calls it as layers come and go), the checklist coloured."""
        super().reset_choices()
        self._color_choices()

    def _clusters_changed(self, _=None):
        self.chosen.reset_choices()
        self._color_choices()

    def _color_choices(self, _=None):
        """Each cluster of the checklist on its colour in the layer."""
        from qtpy.QtGui import QColor

        layer = self.clusters.value
        items = self.chosen.native
        if layer is None or not items.count():
            return
        ids = np.array(list(self.chosen.choices))
        for row, rgba in enumerate(np.asarray(layer.colormap.map(ids))):
            item = items.item(row)
            item.setBackground(QColor.fromRgbF(*map(float, rgba[:3])))
            dark = float(np.dot(rgba[:3], (0.299, 0.587, 0.114))) < 0.5
            item.setForeground(QColor("white" if dark else "black"))

    def _follow_clicks(self, _=None):
        """While "pick" is on, clicks in the viewer (whichever layer is selected) pick
        clusters of the clusters layer."""
        callbacks = self._viewer.mouse_drag_callbacks
        if self.pick.value and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not self.pick.value and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, _viewer, event):
        """A click on a cluster adds it to the chosen ones, or takes it out."""
        layer = self.clusters.value
        if layer is None:
            return
        value = layer.get_value(
            event.position, view_direction=event.view_direction,
            dims_displayed=event.dims_displayed, world=True,
        )  # fmt: skip
        if value is None or int(value) not in self.chosen.choices:
            return
        chosen = set(self.chosen.value) ^ {int(value)}
        self.chosen.value = sorted(chosen)
        self.status.value = f"chosen: {', '.join(map(str, sorted(chosen))) or 'none'}"

    # actions: each in a worker, its layer added when done

    def clean(self):
        layer = self._layer()
        if layer is None:
            return None
        min_size, radius = self.min_size.value, self.radius.value
        spacing = _frame_spacing(layer)
        if not self._connects(layer, spacing):
            return None
        return self._work(  # dask labels (a lazy clustering) are cleaned lazily, chunk by chunk
            lambda: clean(
                as_array(layer.data, "labels"), min_size=min_size, radius=radius, spacing=spacing
            ),
            lambda data: self._add_like(layer, data, f"{layer.name} cleaned"),
        )

    def objects(self):
        layer = self._layer()
        if layer is None:
            return None
        chosen = list(self.chosen.value) or None
        source = self._source_image(layer)
        spacing, origin = _frame_spacing(layer), np.asarray(layer.translate, np.float64)
        scale = np.asarray(layer.scale, np.float64)
        if not self._connects(layer, spacing):
            return None

        def work():  # dask labels (a lazy clustering) are read chunk by chunk
            found = objects(
                as_array(layer.data, "labels"), clusters=chosen, spacing=spacing,
                origin=origin, image=source,
            )  # fmt: skip
            # from the frame's index (axes of spacing 0) or the pixel size to world: a
            # negative scale flips an axis
            steps = step(np.asarray(spacing))
            for axis in np.flatnonzero((steps != np.asarray(spacing)) | (scale < 0)):
                index = (found.table[f"centroid-{axis}"] - origin[axis]) / steps[axis]
                found.table[f"centroid-{axis}"] = origin[axis] + index * scale[axis]
            return found

        def done(found):
            self._viewer.add_labels(
                found.labels, name=f"{layer.name} objects", features=found.table,
                **_layers._transforms(layer),
            )  # fmt: skip

        return self._work(work, done)

    def mask(self):
        layer = self._layer()
        if layer is None:
            return None
        chosen = list(self.chosen.value)
        if not chosen:  # (an empty mask, named 'mask of none', was added)
            self._refuse("Choose one cluster or more for the mask (click them, or tick them).")
            return None
        name = f"{layer.name} mask of {', '.join(map(str, chosen))}"
        labels = as_array(layer.data, "labels")
        isin = da.isin if isinstance(labels, da.Array) else np.isin  # lazy for dask labels
        return self._work(
            lambda: isin(labels, chosen).astype(np.uint8),
            lambda data: self._viewer.add_labels(data, name=name, **_layers._transforms(layer)),
        )

    def uncertainty(self):
        """An image layer of 1 - the margin between each pixel's two nearest centres (see
        :func:`napari_kmeanz.margins`): bright where the clustering is unsure."""
        layer = self._layer()
        if layer is None:
            return None
        name = layer.metadata[_layers.PREFIX].get("source")
        if name not in self._viewer.layers:
            self._refuse(f"The image {name!r} that {layer.name!r} was made from is gone.")
            return None
        image = self._viewer.layers[name]
        model = _model_of(layer)

        def done(margin):
            self._viewer.add_image(
                1.0 - margin, name=f"{layer.name} uncertainty", colormap="inferno",
                contrast_limits=(0.0, 1.0), **_layers._transforms(layer),
            )  # fmt: skip

        def work():  # lazy for a dask image, chunk by chunk
            margin = margins(image.data, model)
            return margin if isinstance(margin, da.Array) else np.asarray(margin)

        return self._work(work, done)

    def merge(self):
        """Merge the chosen clusters into the lowest of their ids, in the layer (napari's
        undo takes it back) and in its model: the merged centre and colour are the means of
        theirs, weighted by their pixels, and every merged id keeps that centre, so the
        model labels the merged cluster with the lowest id."""
        layer = self._layer()
        chosen = sorted(self.chosen.value)
        if layer is None or len(chosen) < 2:
            if layer is not None:
                self._refuse("Choose two clusters or more to merge.")
            return None
        data = layer.data
        if isinstance(data, da.Array):
            self._refuse(
                f"{layer.name!r} is computed lazily (dask): merging edits labels in memory. "
                "Apply the model to an image in memory, or merge in the model and apply it."
            )
            return None

        def work():
            values = np.asarray(data)
            counts = np.bincount(values.ravel(), minlength=max(chosen) + 1)
            return np.nonzero(np.isin(values, chosen[1:])), counts[chosen]

        def done(found):
            where, counts = found
            layer.data_setitem(where, chosen[0])  # (recorded for undo)
            layer.metadata = {**layer.metadata, _layers.PREFIX: {
                **layer.metadata[_layers.PREFIX],
                "model": merged_model(layer.metadata[_layers.PREFIX]["model"], chosen, counts),
            }}  # fmt: skip
            self.chosen.reset_choices()

        return self._work(work, done)

    def fractions(self):
        """A plot of each cluster's fraction of the pixels, frame by frame (the first axis of
        a stack, a time-lapse say), in the clusters' colours."""
        layer = self._layer()
        if layer is None:
            return None
        if layer.ndim < 3:
            self._refuse(f"{layer.name!r} has no frames: it is {layer.ndim}-D.")
            return None
        k = len(layer.metadata[_layers.PREFIX]["model"]["centers"])
        colors = np.asarray(layer.colormap.map(np.arange(1, k + 1)))[:, :3]
        data = layer.data

        def work():
            table = cluster_table(data, k)
            fractions = np.asarray(table["fraction"]).reshape(-1, k)
            return _io.fractions_plot(fractions, colors, (360, 220))

        def done(picture):
            self.plot.value = picture
            self.plot.visible = True

        return self._work(work, done)

    def save_model(self):
        layer = self._layer()
        path = Path(self.model_path.value)
        if layer is None:
            return
        if path.is_dir() or not path.parent.is_dir():
            self._refuse(f"Choose a model file in an existing folder (not {str(path)!r}).")
            return
        try:
            _model_of(layer).save(path)
        except OSError as err:  # a read-only folder, a full disk: nothing written
            self._refuse(f"Cannot write {str(path)!r}: {err.strerror or err}.")
            return
        self.status.value = f"saved {path.name}"

    def apply_model(self):
        image, path = self.target.value, Path(self.model_path.value)
        if image is None or not path.is_file():
            self._refuse(f"Choose an image layer and a model file (not {str(path)!r}).")
            return None
        try:
            model = load(path)
        except (OSError, ValueError) as err:
            self._refuse(str(err))
            return None

        def done(labels):
            data, kwargs, _ = _layers.model_labels(image, model, labels)
            self._viewer.add_labels(data, **kwargs)

        # a dask layer (a stack, a store) gets lazy labels, computed as napari shows them
        return self._work(lambda: predict(image.data, model), done)

    def fit_several(self):
        """One model fitted on a pooled sample of the chosen image layers (see
        :func:`napari_kmeanz.kmeans` of several images), and a "<name> clusters" layer of
        each by it: the same ids and colours in every layer (lazy labels for dask layers).
        Position, with a spatial weight, is in the first layer's world units."""
        layers = list(self.fit_layers.value)
        problem = _fit_problem(layers)
        if problem:
            self._refuse(problem)
            return None
        images = [layer.data for layer in layers]
        options = {
            "spatial_weight": self.fit_weight.value,
            "spacing": tuple(_layers.pixel_size(layers[0])),
            "channel_axis": -1 if layers[0].rgb else None,
            "random_state": 0,
            "max_iter": WIDGET["max_iter"],
        }
        k = self.fit_k.value

        def done(result):
            model = replace(result, labels=None)
            for layer, labels in zip(layers, result.labels, strict=True):
                data, kwargs, _ = _layers.model_labels(layer, model, labels)
                self._viewer.add_labels(data, **kwargs)

        return self._work(lambda: kmeans(images, k, **options), done)

    # plumbing

    def _layer(self):
        layer = self.clusters.value
        if layer is None:
            self._refuse("No clusters layer: run the K-means widget first.")
        return layer

    def _source_image(self, layer):
        """The image the clusters layer was made from, when it is still in the viewer."""
        name = layer.metadata[_layers.PREFIX].get("source")
        if name in self._viewer.layers:
            data = as_array(self._viewer.layers[name].data)
            if data.shape[: layer.ndim] == layer.data.shape:
                return data
        return None

    def _add_like(self, layer, data, name):
        self._viewer.add_labels(data, name=name, colormap=layer.colormap,
                                **_layers._transforms(layer))  # fmt: skip

    def _work(self, function, done):
        from napari.qt.threading import create_worker

        def guarded():  # bad input the core finds (a model that does not fit): said, once
            try:
                return True, function()
            except (ValueError, TypeError, OSError) as err:
                return False, str(err)

        def returned(outcome):
            ok, value = outcome
            if not ok:
                self._refuse(value)
                return
            done(value)
            self.status.value = "done"

        worker = create_worker(guarded)
        worker.returned.connect(returned)
        worker.errored.connect(lambda err: self._refuse(str(err)))
        self.status.value = "working..."
        worker.start()
        return worker

    def _connects(self, layer, spacing) -> bool:
        """Whether regions can be found in ``layer`` (along at most three axes, the frames
        apart); if not, says so before any work."""
        try:
            check_region_axes(layer.data.shape, planes_of(spacing))
        except ValueError:
            self._refuse(
                f"{layer.name!r} is {layer.ndim}-D: regions are found along at most 3 axes. "
                "Cluster the image 'frame by frame' to clean it and split it into objects "
                "frame by frame."
            )
            return False
        return True

    def _refuse(self, message: str):
        from napari.utils.notifications import show_error

        self.status.value = message
        show_error(message)


def _fit_problem(layers) -> str | None:
    """Why these layers cannot be fitted together, or None."""
    if not layers:
        return "Choose the image layers to fit one model on."
    if any(layer.multiscale for layer in layers):
        return "Multiscale layers cannot be fitted together yet: choose single-scale ones."
    first = layers[0]
    for layer in layers[1:]:
        if layer.rgb != first.rgb or layer.ndim != first.ndim:
            return (
                f"{layer.name!r} and {first.name!r} cannot share a model: one is "
                f"{'RGB' if layer.rgb else 'grey'} {layer.ndim}-D, the other "
                f"{'RGB' if first.rgb else 'grey'} {first.ndim}-D."
            )
    return None


def merged_model(document: dict, chosen: list[int], counts) -> dict:
    """The model's JSON object with clusters ``chosen`` (ids, lowest first) merged: each
    takes the pixel-weighted mean centre and colour of all of them."""
    weights = np.asarray(counts, np.float64)
    weights = (
        weights / weights.sum() if weights.sum() > 0 else np.full(len(chosen), 1 / len(chosen))
    )
    rows = [c - 1 for c in chosen]
    merged = {}
    for key in ("centers", "colors"):
        values = np.array(document[key], dtype=np.float64)
        values[rows] = weights @ values[rows]
        merged[key] = values.tolist()
    totals = np.array(document["counts"])
    totals[rows[0]], totals[rows[1:]] = totals[rows].sum(), 0
    return {**document, **merged, "counts": totals.tolist()}


def _frame_spacing(layer) -> tuple[float, ...]:
    """The layer's pixel size (its scale, unsigned), 0 along the axes its clustering took
    frame by frame (spacing 0 in its parameters): cleaning and objects then keep to each
    frame too."""
    scale = np.asarray(_layers.pixel_size(layer), np.float64)
    fitted = layer.metadata.get(_layers.PREFIX, {}).get("parameters", {}).get("spacing")
    if fitted is not None and len(fitted) == len(scale):
        scale[np.asarray(fitted, np.float64) == 0] = 0.0
    return tuple(scale)


def _model_of(layer) -> KMeansResult:
    """The model a clusters layer's metadata holds."""
    return KMeansResult(**_model.from_dict(layer.metadata[_layers.PREFIX]["model"]))
