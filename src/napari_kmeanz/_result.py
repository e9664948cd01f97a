"""Results and what they do: :class:`KMeansResult`, :class:`KMeansState`, :func:`predict`
and :func:`recolor`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import dask.array as da
import numpy as np

from . import _model
from ._compute import to_numpy
from ._features import FeatureSpace
from ._filters import check_width
from ._params import (
    Image,
    Layout,
    as_array,
    axis_index,
    channels_last,
    channels_text,
    check_mask,
    check_spacing,
    fit_overlap,
    full_scale,
    label_dtype,
    layout_of,
    masked_pixels,
    value_scale,
)
from ._pixels import PixelSource, label_centroids


@dataclass(frozen=True, eq=False)
class KMeansResult:
    """The outcome of :func:`kmeans`.

    Attributes
    ----------
    labels : ndarray or dask.array.Array of shape (*spatial,), list of them, or None
        Cluster of each pixel, 1..k; 0 for pixels that were not clustered (masked out, fully
        transparent, or NaN); one array per image for several images (a list); None for a
        model read by :func:`load`. A dask array when the input was one (computed lazily):
        lazy labels read the input again when computed, so changing a store (zarr) after the
        run changes them too; compute or write them (``labels.to_zarr``) before changing it.
    colors : ndarray of shape (k, C)
        Mean value of each cluster's pixels, per channel, in the image's own units (alpha left
        out); with ``color_space='lab'``, the cluster's mean Lab colour in the image's RGB
        units. For a cluster with no pixel, the value part of its centre.
    centers : ndarray of shape (k, n_features)
        Cluster centres in feature space (see :attr:`feature_space`); ``labels`` assign every
        pixel to the nearest of them.
    counts : ndarray of shape (k,)
        Number of pixels in each cluster.
    inertia : float
        Sum of squared feature distances of the pixels to their cluster centre.
    inertia_history : ndarray of shape (n_iter,)
        Inertia of each round's assignment, before its centre update.
    n_iter : int
        Number of rounds run over all pixels.
    converged : bool
        True when the run stopped on the tolerance or because centres stopped moving, False
        when it ran out of rounds.
    feature_space : FeatureSpace
        Spacing and spatial scale of the position features.
    dtype : numpy.dtype
        The input image's dtype.
    layout : Layout
        Channel axis and alpha of the input, used by :meth:`recolor` and :meth:`predict`.
    """

    labels: np.ndarray | da.Array
    colors: np.ndarray
    centers: np.ndarray
    counts: np.ndarray
    inertia: float
    inertia_history: np.ndarray
    n_iter: int
    converged: bool
    feature_space: FeatureSpace
    dtype: np.dtype
    layout: Layout

    @property
    def n_clusters(self) -> int:
        return len(self.centers)

    def recolor(self):
        """The image with every pixel painted in its cluster's colour, in the input's layout.

        Returns an array of the input's dtype and shape; where the input had alpha, clustered
        pixels are opaque and the others fully transparent. Lazy when ``labels`` is. For
        several images (``labels`` a list), a list: each image recoloured.
        """
        labels = self._labels()
        if isinstance(labels, list):
            return [self._recolor(one) for one in labels]
        return self._recolor(labels)

    def _recolor(self, labels):
        out = recolor(labels, self.colors, dtype=self.dtype, alpha=self.layout.alpha)
        if self.layout.channel_axis is None:
            return out[..., 0]
        if self.layout.channel_axis != self.layout.ndim - 1:
            xp = da if isinstance(out, da.Array) else np
            out = xp.moveaxis(out, -1, self.layout.channel_axis)
        return out

    def predict(self, image, *, mask=None, spacing=None, channel_axis=None):
        """Labels of another image by these centres; see :func:`predict`."""
        return predict(image, self, mask=mask, spacing=spacing, channel_axis=channel_axis)

    def save(self, path) -> None:
        """Write the model (everything :func:`predict` needs, not the labels) to exactly
        ``path``, as JSON (the format: ``napari_kmeanz._model``); :func:`load` reads it."""
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        _model.write(path, fields)

    def _labels(self):
        if self.labels is None:
            raise ValueError(
                "This model was read from a file and has no labels: label an image with "
                "predict(image, model)."
            )
        return self.labels

    def centroids(self) -> np.ndarray:
        """Mean pixel position of each cluster, shape (k, spatial ndim), in pixel indices.

        Computed chunk by chunk from :attr:`labels` (a pass over them when they are lazy); NaN
        for a cluster without pixels. For several images, a list: each image's.
        """
        labels = self._labels()
        if isinstance(labels, list):
            return [label_centroids(one, self.n_clusters) for one in labels]
        return label_centroids(labels, self.n_clusters)


@dataclass(frozen=True, eq=False)
class KMeansState:
    """Where a run of :func:`iter_kmeans` stands after a round.

    Attributes
    ----------
    round : int
        Rounds done so far.
    max_iter : int
    inertia_history : tuple of float
    centers : ndarray of shape (k, n_features)
        The centres after this round's update, ordered as the final ids will be.
    colors : ndarray of shape (k, C)
        The value part of ``centers``: the mean colour of each cluster of this round.
    done : bool
        True for the last state, which carries ``result``.
    result : KMeansResult or None
    """

    round: int
    max_iter: int
    inertia_history: tuple[float, ...]
    centers: np.ndarray
    colors: np.ndarray
    done: bool = False
    result: KMeansResult | None = None
    _labeler: Callable | None = field(default=None, repr=False)

    def labels(self):
        """Labels of every pixel by this state's centres (lazy for a dask input)."""
        return self._labeler(self.centers)


def predict(image, model: KMeansResult, *, mask=None, spacing=None, channel_axis=None):
    """Assign the pixels of an image to the nearest centres of a fitted model.

    Parameters
    ----------
    image : array_like or dask.array.Array
        An image with the same channels (and alpha) as the one ``model`` was fitted on, and
        values on the same scale (floats for a float model, the same integer range for an
        integer one); its spatial shape may differ (another frame, another tile, the full
        resolution). The mask of a numpy masked array leaves its pixels out. A stack of
        such images along a first axis more (the frames of a time-lapse) is labelled frame
        by frame, the same ids in every frame (frame by frame lazily for a dask stack).
    model : KMeansResult
        From :func:`kmeans`. Its feature space (spacing, spatial scale) is used as it is.
    mask : array_like, optional
        Only pixels where it is non-zero are labelled.
    spacing : sequence of float, optional
        Pixel size of ``image`` along each spatial axis, in the units of the fitted image's
        spacing; default: the fitted image's. For another resolution level of the same image,
        the downsampling factors (times the fitted spacing).
    channel_axis : int, optional
        The image's axis of channels where it is not the model's (a (C, Y, X) array for a
        model fitted on (Y, X, C)); default: the model's. Only for a model with channels.

    Returns
    -------
    ndarray or dask.array.Array
        Labels 1..k as in ``model.labels`` (0 where not labelled); lazy for a dask input.
        Lazy labels read ``image`` when they are computed: if it is a store (zarr) that is
        changed afterwards, so are they; compute or write them before changing it.

    Raises
    ------
    ValueError
        When the image does not fit the model: other dimensions, channels or value scale.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_kmeanz import kmeans, predict
    >>> image = data.astronaut()
    >>> model = kmeans(image[:256], 4, random_state=0)
    >>> predict(image[256:], model).shape
    (256, 512)
    """
    if _is_stack(image, model):
        return _each_frame(image, mask, lambda f, m: predict(
            f, model, mask=m, spacing=spacing, channel_axis=channel_axis))  # fmt: skip
    source, lazy = _pixels_of(image, model, mask, spacing, channel_axis)
    labels = source.labels(model.centers, label_dtype(model.n_clusters))
    return labels if lazy else to_numpy(labels)


def _is_stack(image, model) -> bool:
    """Whether ``image`` is a stack of frames for ``model``: one axis more than the image
    it was fitted on, in front. A colour picture is not a stack of grey frames: an image
    whose last axis holds 3 or 4 values, for a model of grey images, is refused."""
    if not isinstance(model, KMeansResult) or np.ndim(image) != model.layout.ndim + 1:
        return False
    shape = np.shape(image)
    if model.layout.channel_axis is None and shape[-1] in (3, 4):
        raise ValueError(
            f"image of shape {tuple(shape)} looks like an RGB(A) picture, but the model was "
            "fitted on grey images (no channel axis): fit a model on colour images for it. "
            "(A stack of grey frames is labelled frame by frame along its first axis.)"
        )
    return True


def _each_frame(image, mask, label):
    """``label(frame, frame's mask)`` for every frame along the first axis, stacked."""
    frames = [label(image[i], None if mask is None else mask[i]) for i in range(len(image))]
    return da.stack(frames) if isinstance(frames[0], da.Array) else np.stack(frames)


def margins(image, model: KMeansResult, *, mask=None, spacing=None, channel_axis=None):
    """How sure the clustering is of each pixel: its margin between the nearest and the
    second-nearest centre of ``model``, normalised.

    The margin is ``(d2 - d1) / (d2 + d1)`` for the distances ``d1 <= d2`` (in feature space)
    to the two nearest centres: 0 where two centres are equally near (the boundary between
    two clusters: unsure), towards 1 on a centre far from the others. Takes the arguments of
    :func:`predict` (a stack of frames too); returns float32 of the image's spatial shape
    (lazy for a dask image), NaN where pixels are not clustered; 1 everywhere for a model of
    one cluster.
    """
    if _is_stack(image, model):
        return _each_frame(image, mask, lambda f, m: margins(
            f, model, mask=m, spacing=spacing, channel_axis=channel_axis))  # fmt: skip
    source, lazy = _pixels_of(image, model, mask, spacing, channel_axis)
    margin = source.margins(model.centers)
    return margin if lazy else to_numpy(margin)


def _image_axis(channel_axis, fitted, ndim: int):
    """The image's axis of channels for :func:`predict`: ``channel_axis``, or the model's."""
    if channel_axis is None:
        return fitted.channel_axis
    if fitted.channel_axis is None:
        raise ValueError(
            f"channel_axis={channel_axis!r}: the model was fitted on grey images (no channel "
            "axis); label a grey image with it."
        )
    return axis_index(channel_axis, ndim, "an int or None")


def _axis_hint(shape, n_fitted: int, axis) -> str:
    """Where another axis of ``shape`` holds the model's channels: say which to give."""
    others = [i for i, n in enumerate(shape) if n == n_fitted and i != axis]
    return f" If axis {others[0]} holds them, give channel_axis={others[0]}." if others else ""


def _pixels_of(image, model: KMeansResult, mask, spacing, channel_axis=None):
    """The pixels of ``image`` as points of ``model``'s feature space, checked against the
    model; and whether the image is lazy."""
    if not isinstance(model, KMeansResult):
        raise TypeError(f"model must be a KMeansResult, got {type(model).__name__}.")
    array = as_array(image)
    fitted = model.layout
    axis = _image_axis(channel_axis, fitted, fitted.ndim)
    n_fitted = model.feature_space.n_channels + fitted.alpha
    fitted_channels = channels_text(n_fitted) + (" (colour plus alpha)" if fitted.alpha else "")
    if array.ndim != fitted.ndim:
        raise ValueError(
            f"image has {array.ndim} dimensions (shape {array.shape}), the model was fitted on "
            f"an image with {fitted.ndim} dimensions and {fitted_channels}."
        )
    n_channels = 1 if axis is None else array.shape[axis]
    alpha = fitted.alpha
    if model.feature_space.n_channels == 3 and n_channels in (3, 4):  # colour, with or
        alpha, n_fitted = n_channels == 4, n_channels  # without alpha, as for a fit
    if n_channels != n_fitted:
        raise ValueError(
            f"image has {channels_text(n_channels)} along axis {axis} (shape "
            f"{array.shape}), the model was fitted on {fitted_channels}."
            + _axis_hint(array.shape, n_fitted, axis)
        )
    if value_scale(array.dtype) != value_scale(model.dtype):
        raise ValueError(
            f"image has dtype {array.dtype}, whose values are on another scale than the "
            f"model's dtype {np.dtype(model.dtype)} (0..{full_scale(model.dtype):g}): convert "
            f"the image to {np.dtype(model.dtype)} first (skimage.util offers img_as_*)."
        )
    layout = layout_of(tuple(array.shape), axis, alpha)
    data = channels_last(array, layout)
    masked = masked_pixels(image, layout)
    mask = check_mask(mask, data.shape[:-1], data.chunks[:-1], masked)
    space = model.feature_space
    if spacing is not None:
        space = respaced(space, check_spacing(spacing, layout.spatial_ndim))
    check_width(space.filters, data.shape[:-1])
    image = fit_overlap(Image(data, mask, layout, array.dtype, True), space.filters)
    source = PixelSource(image.data, image.mask, layout.alpha, space)
    return source, isinstance(array, da.Array)


def load(path) -> KMeansResult:
    """The model written by :meth:`KMeansResult.save` at ``path`` (its ``labels`` None).

    ``predict(image, load(path))`` labels any image exactly as the saved model does. Raises
    ValueError, saying what is wrong, for a file that is not such a model (corrupt,
    truncated, or of another format version).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skimage import data
    >>> from napari_kmeanz import kmeans, load, predict
    >>> model = kmeans(data.astronaut(), 4, random_state=0)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "astronaut.kmeanz.json"
    >>> model.save(path)
    >>> bool((predict(data.astronaut(), load(path)) == model.labels).all())
    True
    """
    return KMeansResult(**_model.read(path))


def respaced(space: FeatureSpace, spacing: tuple[float, ...]) -> FeatureSpace:
    """``space`` for pixels of another size: the same physical scale of the position
    features and of the filters (a Gaussian of 2 units is 1 pixel where pixels are 2 wide)."""
    filters = space.filters
    if filters is not None:
        sigma = tuple(
            s * old / new if new > 0 else 0.0
            for s, old, new in zip(filters.sigma, space.spacing, spacing, strict=True)
        )
        filters = replace(filters, sigma=sigma)
    return replace(space, spacing=spacing, filters=filters)


def recolor(labels, colors, *, dtype=None, alpha=False):
    """Paint every pixel with the colour of its cluster.

    Parameters
    ----------
    labels : array_like or dask.array.Array of int
        Cluster ids 1..k; 0 is painted 0 (black, or transparent with alpha). Any other value
        raises ValueError: at once for an in-memory array, as each chunk is computed for a
        dask array.
    colors : array_like of shape (k, C) or (k,)
        Colour of each cluster.
    dtype : dtype, optional
        Output dtype; integer outputs are rounded and clipped to the dtype's range. Default
        float64.
    alpha : bool, default=False
        Add an alpha channel: opaque (the dtype's maximum, or 1.0 for floats) for labelled
        pixels, fully transparent for label 0.

    Returns
    -------
    ndarray or dask.array.Array of shape (*labels.shape, C), or labels.shape for 1-D ``colors``

    Examples
    --------
    >>> import numpy as np
    >>> from napari_kmeanz import recolor
    >>> colors = np.array([[10, 20, 30], [200, 100, 0]])
    >>> recolor(np.array([[0, 1], [2, 1]]), colors, dtype=np.uint8)[1]
    array([[200, 100,   0],
           [ 10,  20,  30]], dtype=uint8)
    """
    colors = np.asarray(colors, dtype=np.float64)
    if colors.ndim not in (1, 2):
        raise ValueError(f"colors must have shape (k, C) or (k,), got shape {colors.shape}.")
    if not np.all(np.isfinite(colors)):
        row = int(np.flatnonzero(~np.isfinite(colors.reshape(len(colors), -1)).all(axis=1))[0])
        raise ValueError(f"colors must be finite, got {colors[row]} for cluster {row + 1}.")
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    if dtype.kind not in "iuf":
        raise TypeError(f"dtype must be an integer or float dtype, got {dtype}.")
    if alpha:
        if colors.ndim != 2:
            raise ValueError("alpha=True needs colors of shape (k, C).")
        colors = np.column_stack([colors, np.full(len(colors), full_scale(dtype))])
    table = np.zeros((len(colors) + 1, *colors.shape[1:]))
    table[1:] = colors
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        table = np.clip(np.rint(table), info.min, info.max)
    table = table.astype(dtype)
    if isinstance(labels, da.Array):
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
        # lazy labels are checked chunk by chunk, as each is computed
        return labels.map_blocks(
            _paint,
            table,
            dtype=dtype,
            new_axis=list(range(labels.ndim, labels.ndim + colors.ndim - 1)),
            chunks=(*labels.chunks, *((c,) for c in colors.shape[1:])),
            meta=np.empty((0,) * (labels.ndim + colors.ndim - 1), dtype=dtype),
        )
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
    return _paint(labels, table)


def _paint(labels: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[labels]``, for labels in 0..len(table) - 1 only (never indices from the end)."""
    if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
        raise ValueError(
            f"labels must lie in 0..{len(table) - 1} (one colour per cluster), got values in "
            f"{labels.min()}..{labels.max()}."
        )
    return table[labels]
