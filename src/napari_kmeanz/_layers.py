"""From napari layers to a k-means run, and from its result back to layers.

The adapter between the pure core and napari: :func:`make_job` turns a source layer (and the
widget's values) into a call of :func:`napari_kmeanz.iter_kmeans`; :func:`result_layers` turns a
state or result into layer data tuples aligned with the source; :func:`apply_layers` adds those
layers to a viewer, or updates the ones a previous run added. Nothing here imports Qt.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from ._defaults import WIDGET
from ._kmeans import iter_kmeans
from ._lloyd import TooFewDistinctPoints
from ._model import model_dict
from ._params import full_scale, value_scale
from ._result import KMeansResult, KMeansState, predict, recolor

if TYPE_CHECKING:
    import napari

# Largest image (in pixels) whose labels are recomputed after every round for live display.
LIVE_PIXELS = 1 << 24
# A multiscale layer is fitted on its coarsest level with at least this many pixels.
FIT_LEVEL_PIXELS = 1 << 18
TRANSFORMS = ("scale", "translate", "rotate", "shear", "axis_labels", "units")
PREFIX = "napari-kmeanz"
MODEL_FIELDS = ("centers", "colors", "counts", "inertia", "inertia_history", "n_iter",
                "converged", "feature_space", "dtype", "layout")  # fmt: skip


@dataclass
class Job:
    """A k-means run on napari layers: what to cluster, with what, and how to show it."""

    source: napari.layers.Image
    channel_layers: list  # the layers whose values are the channels (the source alone, or more)
    data: object  # the array clustered
    kwargs: dict  # keyword arguments of iter_kmeans
    levels: list = field(default_factory=list)  # (array, spacing) per level of a multiscale
    rgb: bool = False
    source_data: object = None  # the source layer's data when the job was made
    # the layers' names when the job was made: a layer renamed mid-run does not split the
    # names of its results ("retina clusters" beside "eye recoloured")
    names: tuple = ()

    def __post_init__(self):
        if not self.names:
            self.names = (self.source.name, *(layer.name for layer in self.channel_layers))

    @property
    def source_name(self) -> str:
        return self.names[0]

    @property
    def channel_names(self) -> tuple:
        return self.names[1:]

    def states(self, cancel=None, progress=None):
        """Check the parameters (raising ValueError/TypeError) and return the round iterator
        (see :func:`napari_kmeanz.iter_kmeans` for ``cancel`` and ``progress``)."""
        return iter_kmeans(self.data, **self.kwargs, cancel=cancel, progress=progress)

    @property
    def live(self) -> bool:
        """Whether labels are recomputed after every round for display."""
        lazy = isinstance(self.data, da.Array) or bool(self.levels)
        return not lazy and math.prod(self.spatial_shape) <= LIVE_PIXELS

    @property
    def spatial_shape(self):
        return self.data.shape[:-1] if self.kwargs.get("channel_axis") == -1 else self.data.shape


def _level_spacing(layer, level: int) -> tuple[float, ...]:
    """Pixel size of a multiscale level in the units of the layer's scale."""
    full, this = layer.data[0].shape, layer.data[level].shape
    spatial = layer.ndim
    return tuple(
        s * f / t
        for s, f, t in zip(pixel_size(layer), full[:spatial], this[:spatial], strict=True)
    )


def pixel_size(layer) -> list[float]:
    """A layer's pixel size along each axis: its scale, whose sign only flips the display."""
    return [abs(float(s)) for s in layer.scale]


def _channel_partners(layer, channel_layers) -> list:
    """The layers clustered as more channels of ``layer``, checked."""
    extra = [c for c in channel_layers if c is not layer]
    if extra and (layer.rgb or any(c.rgb for c in extra)):
        raise ValueError("Only single-channel (grey) layers can be combined as channels.")
    if extra and (layer.multiscale or any(c.multiscale for c in extra)):
        raise ValueError("Multiscale layers cannot be combined as channels.")
    for other in extra:
        if other.data.shape != layer.data.shape:
            raise ValueError(
                f"Layer {other.name!r} has shape {other.data.shape}, but {layer.name!r} has "
                f"shape {layer.data.shape}: channel layers must have the same shape."
            )
        if value_scale(other.data.dtype) != value_scale(layer.data.dtype):
            raise ValueError(
                f"Layer {other.name!r} holds {other.data.dtype} values, {layer.name!r} "
                f"{layer.data.dtype}: their values are on other scales (one channel would "
                "weigh next to nothing); convert them to one dtype first."
            )
    return extra


def _fit_level(layer, fit_level: int | None) -> int:
    """The multiscale level the centres are fitted on (see :func:`make_job`)."""
    if fit_level is None:
        sizes = [math.prod(level.shape[: layer.ndim]) for level in layer.data]
        return max([i for i, n in enumerate(sizes) if n >= FIT_LEVEL_PIXELS] or [0])
    if not 0 <= fit_level < len(layer.data):
        raise ValueError(
            f"fit_level={fit_level} is not a level of {layer.name!r} "
            f"(levels 0..{len(layer.data) - 1})."
        )
    return fit_level


def _mask_of(layer, mask_layer):
    """The mask layer's data, checked against the image layer."""
    if layer.multiscale:
        raise ValueError("A mask cannot be used with a multiscale layer yet.")
    if tuple(mask_layer.data.shape) != tuple(layer.data.shape[: layer.ndim]):
        raise ValueError(
            f"Mask layer {mask_layer.name!r} has shape {tuple(mask_layer.data.shape)}, but "
            f"the image's pixels have shape {tuple(layer.data.shape[: layer.ndim])}."
        )
    return mask_layer.data


def make_job(
    layer,
    *,
    n_clusters: int = WIDGET["n_clusters"],
    spatial_weight: float = 0.0,
    color_space: str = "rgb",
    init: str = "k-means++",
    max_iter: int = WIDGET["max_iter"],
    tol: float = 1e-4,
    seed: int | None = 0,
    mask_layer=None,
    channel_layers=(),
    per_frame: bool = False,
    fit_level: int | None = None,
    sigma: float = 0.0,
    features=(),
) -> Job:
    """A job for ``layer`` and the widget's values.

    Parameters
    ----------
    layer : napari.layers.Image
        The source layer: RGB(A), grey, a stack, dask-backed or multiscale.
    channel_layers : sequence of napari.layers.Image
        More single-channel layers of the same shape, clustered together with ``layer`` as
        channels (napari opens a multichannel file as one layer per channel).
    mask_layer : napari.layers.Labels, optional
        Only the pixels where it is non-zero are clustered.
    color_space : {'rgb', 'lab'}
        For an RGB layer, cluster its colours as they are or as CIE Lab (perceptual); other
        layers are clustered on their values.
    per_frame : bool
        For a stack, leave the first axis out of the position features: the frames are
        clustered together with shared centres, so an id means the same in every frame.
    fit_level : int, optional
        For a multiscale layer, the level the centres are fitted on (every level is then
        labelled with them); default the coarsest level with at least FIT_LEVEL_PIXELS pixels.
    sigma : float
        Gaussian scale of the value features, in the layer's world units (its scale); 0: none.
    features : sequence of str
        Feature kinds (see :func:`napari_kmeanz.kmeans`); empty: the default for ``sigma``.

    Raises
    ------
    ValueError
        For layers that cannot go together (shapes, RGB with channels, multiscale masks).
    """
    if layer is None:
        raise ValueError("No image layer: add or select an image layer to cluster.")
    extra = _channel_partners(layer, channel_layers)
    levels = []
    if layer.multiscale:
        fit = _fit_level(layer, fit_level)
        data = layer.data[fit]
        spacing = list(_level_spacing(layer, fit))
        levels = [(level, _level_spacing(layer, i)) for i, level in enumerate(layer.data)]
    elif extra:
        arrays = [c.data for c in (layer, *extra)]
        lazy = any(isinstance(a, da.Array) for a in arrays)
        data = (da if lazy else np).stack(arrays, axis=-1)
        spacing = pixel_size(layer)
    else:
        data = layer.data
        spacing = pixel_size(layer)
    if per_frame and layer.ndim >= 3:
        spacing[0] = 0.0
        levels = [(a, (0.0, *s[1:])) for a, s in levels]
    mask = None if mask_layer is None else _mask_of(layer, mask_layer)
    channel_axis = -1 if (layer.rgb or extra) else None
    kwargs = {
        "n_clusters": n_clusters,
        "spatial_weight": spatial_weight,
        "channel_axis": channel_axis,
        "alpha": bool(layer.rgb and data.shape[-1] == 4),
        "spacing": spacing,
        "mask": mask,
        "color_space": color_space if layer.rgb else "rgb",
        "sigma": float(sigma) or None,
        "features": list(features) or None,
        "init": init,
        "max_iter": max_iter,
        "tol": tol,
        "random_state": seed,
    }
    return Job(layer, [layer, *extra], data, kwargs, levels, bool(layer.rgb), layer.data)


# -- results as layers ------------------------------------------------------------------------


def _transforms(layer) -> dict:
    kwargs = {name: getattr(layer, name) for name in TRANSFORMS}
    kwargs["affine"] = layer.affine.affine_matrix
    kwargs["units"] = tuple(str(u) for u in layer.units)
    return kwargs


def _display_colors(job: Job, colors: np.ndarray) -> np.ndarray:
    """RGBA (k, 4) in 0..1 showing each cluster's mean value as the source layers show it."""
    k = len(colors)
    rgba = np.zeros((k, 4))
    rgba[:, 3] = 1.0
    dtype = np.dtype(job.data.dtype)
    # the values the recoloured image holds (rounded and clipped to its dtype)
    colors = recolor(np.arange(1, k + 1), colors, dtype=dtype).astype(np.float64)
    if job.rgb:
        rgba[:, :3] = np.clip(colors[:, :3] / full_scale(dtype), 0, 1)
        return rgba
    for channel, layer in enumerate(job.channel_layers):
        low, high = layer.contrast_limits
        values = np.clip((colors[:, channel] - low) / ((high - low) or 1.0), 0, 1)
        rgba[:, :3] += layer.colormap.map(values)[:, :3]
    rgba[:, :3] = np.clip(rgba[:, :3], 0, 1)
    return rgba


def _colormap(job: Job, colors: np.ndarray):
    from napari.utils.colormaps import DirectLabelColormap

    rgba = _display_colors(job, colors)
    color_dict = {None: np.zeros(4), 0: np.zeros(4)}
    color_dict.update({i + 1: rgba[i] for i in range(len(rgba))})
    return DirectLabelColormap(color_dict=color_dict)


def _channel_names(job: Job) -> list[str]:
    if job.rgb:
        return ["R", "G", "B"]
    return list(job.channel_names)


def _features(job: Job, result: KMeansResult):
    import pandas as pd

    k = result.n_clusters
    ids = np.arange(1, k + 1)
    table = {"index": ids, "label": ids, "pixel_count": result.counts}
    table["fraction"] = result.counts / max(int(result.counts.sum()), 1)
    for name, column in zip(_channel_names(job), result.colors.T, strict=False):
        table[f"mean_{name}"] = column
    centroids = result.centroids()
    if job.levels:  # fitted on a coarser level: its pixel indices, in level-0 pixels
        fit_shape = job.data.shape[: job.source.ndim]
        full_shape = job.source.data[0].shape[: job.source.ndim]
        centroids = centroids * (np.array(full_shape) / np.array(fit_shape))
    world = np.array([job.source.data_to_world(c) for c in centroids]).reshape(k, -1)
    labels = job.source.axis_labels
    for axis in range(world.shape[1]):
        table[f"centroid_{labels[axis]}"] = world[:, axis]
    return pd.DataFrame(table)


def _metadata(job: Job, result: KMeansResult) -> dict:
    params = {key: value for key, value in job.kwargs.items() if key != "mask"}
    return {
        PREFIX: {
            "source": job.source_name,
            "parameters": params,
            "inertia": result.inertia,
            "inertia_history": result.inertia_history.tolist(),
            "n_iter": result.n_iter,
            "converged": result.converged,
            "centers": result.centers.tolist(),
            "colors": result.colors.tolist(),
            "spatial_scale": result.feature_space.spatial_scale,
            # the whole model, as napari_kmeanz.load reads it: Save model writes it out
            "model": model_dict({name: getattr(result, name) for name in MODEL_FIELDS}),
        }
    }


def _all_levels(job: Job, result: KMeansResult):
    """Labels of every level of a multiscale source (a list), or the result's labels."""
    if not job.levels:
        return result.labels
    lazy = [a if isinstance(a, da.Array) else da.from_array(a) for a, _ in job.levels]
    return [predict(a, result, spacing=s) for a, (_, s) in zip(lazy, job.levels, strict=True)]


def labels_name(job: Job) -> str:
    return f"{job.source_name} clusters"


def recoloured_names(job: Job) -> list[str]:
    if len(job.channel_layers) > 1:
        return [f"{name} recoloured" for name in job.channel_names]
    return [f"{job.source_name} recoloured"]


def _recoloured(job: Job, labels, colors: np.ndarray) -> list:
    """Recoloured image layer tuples (one per channel layer when several were combined)."""
    dtype = np.dtype(job.data.dtype)
    alpha = job.kwargs["alpha"]
    multi = isinstance(labels, list)
    paint = [recolor(lvl, colors, dtype=dtype, alpha=alpha) for lvl in labels] if multi else None
    single = None if multi else recolor(labels, colors, dtype=dtype, alpha=alpha)
    tuples = []
    names = recoloured_names(job)
    mark = {PREFIX: {"source": job.source_name, "recoloured": True}}  # see is_output
    if job.rgb or len(job.channel_layers) == 1:
        data = paint if multi else single
        if not job.rgb:
            data = [p[..., 0] for p in data] if multi else data[..., 0]
        kwargs = {"name": names[0], "rgb": job.rgb, "metadata": mark, "visible": True}
        kwargs.update(_transforms(job.source))
        if not job.rgb:
            kwargs["contrast_limits"] = job.source.contrast_limits
            kwargs["colormap"] = job.source.colormap.name
        tuples.append((data, kwargs, "image"))
        return tuples
    for channel, layer in enumerate(job.channel_layers):
        kwargs = {
            "name": names[channel],
            "colormap": layer.colormap.name,
            "contrast_limits": layer.contrast_limits,
            # the first covers what lies below (the source channels): the recoloured channels
            # add up to the picture alone, not on top of the originals
            "blending": "opaque" if channel == 0 else "additive",
            "metadata": mark,
            "visible": True,
            **_transforms(layer),
        }
        tuples.append((single[..., channel], kwargs, "image"))
    return tuples


def result_layers(job: Job, outcome: KMeansState | KMeansResult) -> list:
    """Layer data tuples for a finished result, or for a round's state (a live preview).

    Returns ``[labels tuple, recoloured tuple(s)...]``, all aligned with the source layer.
    A preview is the labels alone (drawn in the clusters' mean colours, they show what the
    recoloured image would: half the work for the worker and for napari). A state of a job
    without live previews gives an empty list.
    """
    if isinstance(outcome, KMeansState):
        if outcome.done:
            return result_layers(job, outcome.result)
        if not job.live:
            return []
        labels, colors = outcome.labels(), outcome.colors
        extra = {
            "metadata": {PREFIX: {"round": outcome.round, "preview": True}},
            "features": _empty_features(),  # the last result's table describes it no more
        }
    else:
        labels, colors = _all_levels(job, outcome), outcome.colors
        extra = {"features": _features(job, outcome), "metadata": _metadata(job, outcome)}
    labels_kwargs = {
        "name": labels_name(job),
        "colormap": _colormap(job, colors),
        **_transforms(job.source),
        **extra,
    }
    if isinstance(outcome, KMeansState):
        return [(labels, labels_kwargs, "labels")]
    return [(labels, labels_kwargs, "labels"), *_recoloured(job, labels, colors)]


def image_choices(viewer) -> list:
    """``(name, layer)`` for every image layer of the viewer: the widgets' choices."""
    from napari.layers import Image

    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def model_labels(layer, model: KMeansResult, labels) -> tuple:
    """A labels layer tuple for ``layer`` labelled by a model (read from a file): drawn in the
    model's colours as the layer shows them, aligned with it, the model in its metadata."""
    job = Job(layer, [layer], layer.data, {}, [], bool(layer.rgb), layer.data)
    fields = {name: getattr(model, name) for name in MODEL_FIELDS}
    kwargs = {
        "name": f"{layer.name} clusters",
        "colormap": _colormap(job, model.colors),
        "metadata": {PREFIX: {"source": layer.name, "model": model_dict(fields)}},
        **_transforms(layer),
    }
    return labels, kwargs, "labels"


# -- choosing k -----------------------------------------------------------------------------------


def sweep_results(job: Job, ks, cancel=None):
    """Run the job for every k in ``ks``; yields ``(k, result)`` as each finishes. A k above
    the number of distinct points ends the sweep (and raises when it is the first)."""
    for k in ks:
        states = iter_kmeans(job.data, **{**job.kwargs, "n_clusters": int(k)}, cancel=cancel)
        try:
            result = list(states)[-1].result
        except TooFewDistinctPoints:
            if k == ks[0]:
                raise
            return
        yield int(k), result


def sweep_layer(job: Job, ks, results) -> tuple:
    """The recoloured results of a k sweep as one 8-bit RGB image layer with a slider over k.

    Each frame shows every pixel in its cluster's colour as the source layers display it
    (the label colours). Frame ``i`` is k = i: the frames below the sweep's first k are
    lazy zeros (no memory), so the slider counts k itself.
    """
    frames = []
    for result in results:
        rgb = np.rint(_display_colors(job, result.colors)[:, :3] * 255).astype(np.uint8)
        frames.append(recolor(result.labels, rgb, dtype=np.uint8))
    lazy = any(isinstance(f, da.Array) for f in frames)
    stack = (da if lazy else np).stack(frames)
    below = da.zeros((ks[0], *stack.shape[1:]), dtype=np.uint8, chunks=(1, *stack.shape[1:]))
    data = da.concatenate([below, da.asarray(stack, chunks=(1, *stack.shape[1:]))])
    source = job.source
    # a multiscale source is swept on its fitted level: that level's pixel size
    scale = source.scale
    if job.levels:
        full = source.data[0].shape[: source.ndim]
        scale = [s * f / n for s, f, n in zip(scale, full, job.data.shape, strict=False)]
    kwargs = {
        "name": f"{source.name} k sweep",
        "rgb": True,
        "scale": (1.0, *scale),
        "translate": (0.0, *source.translate),
        "axis_labels": ("k", *source.axis_labels),
        "contrast_limits": (0, 255),
        "metadata": {PREFIX: {"k": list(ks), "inertia": [r.inertia for r in results]}},
    }
    return data, kwargs, "image"


# -- into the viewer ----------------------------------------------------------------------------

FIXED_AT_CREATION = ("rgb", "multiscale")


def _shapes(data) -> list:
    return [tuple(level.shape) for level in data] if isinstance(data, list) else [data.shape]


def is_output(layer) -> bool:
    """Whether napari-kmeanz made this layer."""
    return PREFIX in getattr(layer, "metadata", {})


def same_file(layer, source) -> bool:
    """Whether two grey layers look like channels of one file that napari split
    (``channel_axis``): one shape and placement, blended additively."""
    return (
        layer is not source
        and source is not None
        and not is_output(layer)
        and layer.data.shape == source.data.shape
        and np.allclose(layer.scale, source.scale)
        and np.allclose(layer.translate, source.translate)
        and "additive" in (layer.blending, source.blending)
    )


def existing_outputs(viewer: napari.viewer.Viewer, job: Job) -> list:
    """The layers a previous run on this source made, to update (None where there is none,
    and for labels painted by hand since: those are kept, and a new layer is added)."""
    found = []
    for name in (labels_name(job), *recoloured_names(job)):
        layer = _named(viewer, name)
        if layer is not None and layer.metadata.get(PREFIX, {}).get("edited"):
            layer = None
        found.append(layer)
    return found


def watch_edits(layers) -> None:
    """Mark labels layers painted by hand (napari's paint and fill), so no run overwrites
    them."""
    from napari.layers import Labels

    for layer in layers:
        if isinstance(layer, Labels) and layer not in _WATCHED:
            layer.events.paint.connect(_mark_edited)
            _WATCHED.add(layer)


def _mark_edited(event) -> None:
    layer = event.source
    layer.metadata = {**layer.metadata, PREFIX: {**layer.metadata.get(PREFIX, {}), "edited": True}}


_WATCHED: weakref.WeakSet = weakref.WeakSet()


def _empty_features():
    import pandas as pd

    return pd.DataFrame()


def apply_layers(viewer: napari.viewer.Viewer, tuples: list, targets=None) -> list:
    """Add the layers, or update those given in ``targets`` (one per tuple, None for a new
    one; default: those of the same name), wherever they are and whatever they are called
    now. Returns the layers."""
    from napari.layers import Image, Labels, Layer

    classes = {"image": Image, "labels": Labels}
    if targets is None:
        targets = [_named(viewer, kwargs["name"]) for _, kwargs, _ in tuples]
    touched = []
    for (data, kwargs, kind), existing in zip(tuples, targets, strict=False):
        if existing is not None and existing not in viewer.layers:
            existing = None
        multiscale = isinstance(data, list)
        if existing is not None and (
            not isinstance(existing, classes[kind])
            or existing.multiscale != multiscale
            or getattr(existing, "rgb", False) != kwargs.get("rgb", False)
            or _shapes(existing.data) != _shapes(data)
        ):
            index = viewer.layers.index(existing)
            viewer.layers.remove(existing)
            layer = Layer.create(data, kwargs, kind)
            viewer.layers.insert(index, layer)
        elif existing is not None:
            layer = existing
            for key, value in kwargs.items():
                if key not in ("name", *FIXED_AT_CREATION) and not _same(
                    getattr(layer, key, None), value
                ):
                    setattr(layer, key, value)
            layer.data = data
        else:
            layer = viewer.add_layer(Layer.create(data, kwargs, kind))
        touched.append(layer)
    return touched


def _named(viewer, name: str):
    """The viewer's layer of that name, or None."""
    return viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401


def _same(current, value) -> bool:
    """Whether setting ``value`` would change nothing (it would still cost napari a refresh)."""
    try:
        if isinstance(value, np.ndarray | tuple | list):
            return np.array_equal(
                np.asarray(current, dtype=object), np.asarray(value, dtype=object)
            )
        return current == value if isinstance(value, str | int | float) else False
    except (TypeError, ValueError):
        return False
