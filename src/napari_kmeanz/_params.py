"""Checked inputs: the image, its layout and mask, and the parameters of a run.

Public entry points check everything here before any pass over the pixels; the stages of a
run (``_run``) then assume valid input. :class:`Params` holds the parameters of
:func:`napari_kmeanz.kmeans` once checked; derived values (the feature space, the sample
size in pixels) are kept apart from them.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import dask.array as da
import numpy as np

from ._features import value_extent
from ._filters import Filters, check_features, check_width, merged_chunks
from ._io import is_picture, picture_pixels

INITS = ("k-means++", "random")
COLOR_SPACES = ("rgb", "lab")
# Pixels per chunk when a numpy image is split for the passes.
NUMPY_CHUNK_PIXELS = 1 << 22
# Values (and position features) are clustered as float64: their squares, summed over every
# pixel, must stay far from overflow (1.8e308) and their differences' squares far from
# underflow (2.2e-308). Beyond these bounds a run refuses the image, naming the values found.
MAX_MAGNITUDE = 1e100
MIN_VALUE_RANGE = 1e-100


# -- validation ---------------------------------------------------------------------------------


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return int(value)


def check_real(name: str, value, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}.")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}.")
    return float(value)


def known_chunks(array, name: str):
    """``array``, refused when it is a dask array of unknown chunk sizes (after a boolean
    index, say), whose pixels cannot be placed."""
    if isinstance(array, da.Array) and any(math.isnan(n) for n in array.shape):
        shape = tuple(None if math.isnan(n) else int(n) for n in array.shape)
        raise ValueError(
            f"{name} is a dask array of unknown chunk sizes (shape {shape}); call "
            f"{name}.compute_chunk_sizes() first, or pass it as numpy."
        )
    return array


def as_array(image, name: str = "image"):
    """numpy or dask array of a supported dtype; chunked stores (zarr, h5py) become dask arrays.

    numpy subclasses (``np.matrix``, masked arrays) become plain arrays: the mask of a masked
    array is taken apart by :func:`masked_pixels`.
    """
    if isinstance(image, da.Array):
        array = known_chunks(image, name)
    elif is_picture(image):  # a Pillow image: its colours (a palette's, not its indices)
        array = picture_pixels(image)
    elif isinstance(image, np.ndarray):
        array = np.asarray(np.ma.getdata(image))  # a plain ndarray, never a subclass
    elif hasattr(image, "chunks") and hasattr(image, "dtype") and hasattr(image, "shape"):
        array = da.from_array(image, chunks=getattr(image, "chunks", "auto") or "auto")
    else:
        try:
            array = np.asarray(image)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array, got {type(image).__name__}.") from err
    kind = array.dtype.kind
    if kind == "b":
        raise TypeError(
            f"{name} has dtype bool; cluster a numeric image (a bool image is already a "
            "two-class segmentation)."
        )
    if kind == "c":
        raise TypeError(f"{name} has complex dtype {array.dtype}; take its abs or real part.")
    if kind not in "iuf":
        raise TypeError(f"{name} must have an integer or float dtype, got dtype {array.dtype}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    return array


def masked_pixels(image, layout) -> np.ndarray | None:
    """The pixels that a numpy masked array masks (any of their channels masked), or None."""
    if not isinstance(image, np.ma.MaskedArray) or image.mask is np.ma.nomask:
        return None
    masked = np.ma.getmaskarray(image)
    if layout.channel_axis is not None:
        masked = masked.any(axis=layout.channel_axis)
    return masked


@dataclass(frozen=True)
class Layout:
    """Where the channels are in an input image."""

    ndim: int
    channel_axis: int | None
    alpha: bool

    @property
    def spatial_ndim(self) -> int:
        return self.ndim - (self.channel_axis is not None)


def axis_index(channel_axis, ndim: int, accepted: str, shape=None) -> int:
    """``channel_axis``, an int in -ndim..ndim-1, as an index 0..ndim-1 (else an error that
    says what is ``accepted``, and the image's ``shape`` when given)."""
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, Integral):
        raise TypeError(f"channel_axis must be {accepted}, got {channel_axis!r}.")
    if not -ndim <= channel_axis < ndim:
        image = f"{ndim} dimensions" if shape is None else f"an image with {ndim} dimensions"
        image += "" if shape is None else f" (shape {shape})"
        raise ValueError(f"channel_axis={channel_axis} is out of range for {image}.")
    return int(channel_axis) % ndim


def layout_of(shape: tuple[int, ...], channel_axis, alpha) -> Layout:
    ndim = len(shape)
    if isinstance(channel_axis, str):
        if channel_axis != "auto":
            raise ValueError(f"channel_axis must be 'auto', None or an int, got {channel_axis!r}.")
        rgb = ndim >= 3 and shape[-1] in (3, 4)
        axis = ndim - 1 if rgb else None
        if alpha is None:
            alpha = rgb and shape[-1] == 4
    elif channel_axis is None:
        axis = None
    else:
        axis = axis_index(channel_axis, ndim, "'auto', None or an int", shape)
    if alpha is not None and not isinstance(alpha, bool | np.bool_):
        raise TypeError(f"alpha must be True, False or None, got {alpha!r}.")
    alpha = bool(alpha)
    if alpha and (axis is None or shape[axis] < 2):
        raise ValueError(
            f"alpha=True needs a channel axis with at least 2 channels; the image has shape "
            f"{shape} and channel_axis={channel_axis!r}."
        )
    layout = Layout(ndim, axis, alpha)
    if layout.spatial_ndim < 1:
        raise ValueError(f"image of shape {shape} has no spatial axis beside channel_axis={axis}.")
    return layout


def channels_last(array, layout: Layout) -> da.Array:
    """The image as a dask array of shape (*spatial, channels), channels in one chunk."""
    if layout.channel_axis is None:
        array = array[..., None]
    elif layout.channel_axis != layout.ndim - 1:
        xp = da if isinstance(array, da.Array) else np
        array = xp.moveaxis(array, layout.channel_axis, -1)
    if isinstance(array, da.Array):
        return array.rechunk({array.ndim - 1: -1})
    spatial = array.shape[:-1]
    # one chunk per core (the passes work in cache-sized tiles inside a chunk), at least
    # NUMPY_CHUNK_PIXELS pixels each, as even as whole rows allow: over chunks of 1365 and
    # 683 rows of a 2048x3072 photo, two threads could run a pass at most 1.5x faster than
    # one (measured with two of 1024 rows: 1.2x to 1.7x, on this machine's noisy cores)
    n_pixels = math.prod(spatial)
    per_chunk = max(NUMPY_CHUNK_PIXELS, -(-n_pixels // (os.cpu_count() or 1)))
    n_chunks = -(-n_pixels // per_chunk)
    rows = max(1, -(-spatial[0] // n_chunks))
    return _view_chunks(array, rows)


def _view_chunks(array: np.ndarray, rows: int) -> da.Array:
    """A dask array over bands of ``rows`` along the first axis of ``array``, as views.

    ``da.from_array`` copies a numpy array first (against later changes to it); a run reads
    the image during the call, so views serve, without a copy of the whole image.
    """
    name = f"kmeanz-image-{uuid.uuid4().hex}"
    tail = (0,) * (array.ndim - 1)
    bands = range(0, array.shape[0], rows)
    graph = {(name, i, *tail): array[start : start + rows] for i, start in enumerate(bands)}
    chunks = da.core.normalize_chunks((rows, *array.shape[1:]), array.shape)
    return da.Array(graph, name, chunks, meta=np.empty((0,) * array.ndim, array.dtype))


def check_mask(mask, spatial_shape: tuple[int, ...], chunks, masked=None):
    """The pixels to cluster as a dask bool array with the image's chunks, or None for all.

    A pixel is selected where ``mask`` is non-zero and not NaN, and (for a numpy masked array)
    where ``masked``, the pixels its mask covers, is False.
    """
    if mask is None and masked is None:
        return None
    if mask is None:
        array = np.ones(spatial_shape, dtype=bool)
    elif isinstance(mask, da.Array):
        array = known_chunks(mask, "mask")
    elif hasattr(mask, "chunks") and not isinstance(mask, np.ndarray) and hasattr(mask, "shape"):
        array = da.from_array(mask)
    else:
        array = np.asarray(mask)
    if tuple(array.shape) != tuple(spatial_shape):
        raise ValueError(
            f"mask has shape {tuple(array.shape)}, but the image's spatial shape is "
            f"{tuple(spatial_shape)}."
        )
    if array.dtype.kind not in "biuf":
        raise TypeError(f"mask must be boolean or numeric, got dtype {array.dtype}.")
    selected = array != 0
    if array.dtype.kind == "f":
        selected &= array == array  # NaN selects nothing
    if masked is not None:
        selected &= ~masked
    if isinstance(selected, np.ndarray) and not selected.any():
        if mask is None:
            raise ValueError("image is a masked array whose mask covers every pixel.")
        raise ValueError("mask selects no pixel: every value is 0, False or NaN.")
    return da.asarray(selected).rechunk(chunks)


def check_spacing(spacing, spatial_ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * spatial_ndim
    values = None
    if not isinstance(spacing, str | bytes):
        with contextlib.suppress(TypeError, ValueError):
            values = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if (
        values is None
        or values.shape != (spatial_ndim,)
        or not np.all(np.isfinite(values))
        or np.any(values < 0)
    ):
        shown = spacing  # numpy scalars shown as the numbers they are, not np.float64(...)
        if (
            values is not None
            and values.ndim == 1
            and all(isinstance(v, Real) for v in np.atleast_1d(np.asarray(spacing, dtype=object)))
        ):
            shown = tuple(float(v) for v in values)
        raise ValueError(
            f"spacing must hold {spatial_ndim} finite numbers >= 0 (one per spatial axis), "
            f"got {shown!r}."
        )
    return tuple(float(v) for v in values)


def check_magnitudes(vmin, vmax, spatial_weight: float) -> None:
    """Refuse values (and position features) that float64 squared distances cannot hold."""
    top, spread = value_extent(vmin, vmax)
    if top > MAX_MAGNITUDE:
        raise ValueError(
            f"image values reach {top:.3g}, beyond the {MAX_MAGNITUDE:g} that squared "
            "distances can hold: rescale the image (divide it by its maximum, say)."
        )
    if 0 < spread < MIN_VALUE_RANGE:
        raise ValueError(
            f"image values span only {spread:.3g} (below {MIN_VALUE_RANGE:g}): their squared "
            "differences underflow; rescale the image (divide it by its range, say)."
        )
    value_range = float(np.max(vmax)) - float(np.min(vmin))
    if spatial_weight * value_range > MAX_MAGNITUDE:
        raise ValueError(
            f"spatial_weight={spatial_weight!r} makes the position features span "
            f"{spatial_weight * value_range:.3g}, beyond {MAX_MAGNITUDE:g}: use a smaller weight."
        )


def full_scale(dtype) -> float:
    """The value that stands for full intensity: the maximum of an integer dtype, 1.0 for
    floats (255 for uint8, 65535 for uint16)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0


def channels_text(n: int) -> str:
    return f"{n} channel" if n == 1 else f"{n} channels"


def value_scale(dtype):
    """What a value means: floats on one scale, each integer range on its own."""
    dtype = np.dtype(dtype)
    return "float" if dtype.kind == "f" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))


def label_dtype(n_clusters: int) -> np.dtype:
    return np.dtype(np.min_scalar_type(n_clusters))


@dataclass(frozen=True, eq=False)
class Image:
    """A checked input image, as the passes read it.

    ``data`` has shape ``(*spatial, channels)`` with the channels in one chunk (alpha last,
    when ``layout.alpha``); ``mask`` (a dask bool array with the spatial chunks, or None)
    selects the pixels to cluster.
    """

    data: da.Array
    mask: da.Array | None
    layout: Layout
    dtype: np.dtype
    lazy: bool  # whether the input was a dask array (results stay lazy)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.data.shape[:-1]

    @property
    def n_channels(self) -> int:
        """Value channels (alpha left out)."""
        return self.data.shape[-1] - self.layout.alpha


def check_image(image, channel_axis="auto", alpha=None, mask=None) -> Image:
    """The input image, its layout and its mask, checked (see :func:`kmeans`)."""
    array = as_array(image)
    layout = layout_of(tuple(array.shape), channel_axis, alpha)
    if alpha is None and layout.alpha and array.dtype.kind in "iu" and array.itemsize > 1:
        warnings.warn(
            f"The last of the 4 channels of this {array.dtype} image (shape "
            f"{tuple(array.shape)}) is taken for alpha: not a feature, and its pixels of "
            "alpha 0 are not clustered. Pass alpha=False to cluster 4 channels of values "
            "(microscopy), or alpha=True to say it is alpha.",
            stacklevel=4,  # kmeans's caller (check_image, iter_kmeans, kmeans)
        )
    data = channels_last(array, layout)
    masked = masked_pixels(image, layout)
    mask = check_mask(mask, data.shape[:-1], data.chunks[:-1], masked)
    return Image(data, mask, layout, array.dtype, isinstance(array, da.Array))


@dataclass(frozen=True, eq=False)
class Params:
    """The parameters of one run of :func:`kmeans`, checked; see there for their meaning.

    Build it with :meth:`check` from the arguments of a call. The user's values are kept as
    given (an ``init`` array as float64); what the run derives from them lives elsewhere.
    """

    n_clusters: int
    spatial_weight: float
    spacing: tuple[float, ...]
    color_space: str
    init: str | np.ndarray
    max_iter: int
    tol: float
    random_state: int | np.random.Generator | None
    sample_size: int
    n_init: int
    filters: Filters | None = None  # from ``sigma`` and ``features``

    @classmethod
    def check(cls, arguments: dict, image: Image) -> Params:
        """The checked parameters among ``arguments`` (the keyword arguments of a call of
        :func:`kmeans`, by name) for ``image``; raises before any pass over the pixels."""
        a = arguments
        n_clusters = check_int("n_clusters", a["n_clusters"], 1)
        spatial_weight = check_real("spatial_weight", a["spatial_weight"], 0.0)
        if spatial_weight > MAX_MAGNITUDE:
            raise ValueError(
                f"spatial_weight must be <= {MAX_MAGNITUDE:g} (position features that large "
                f"overflow the squared distances), got {a['spatial_weight']!r}."
            )
        numbers = {
            "max_iter": check_int("max_iter", a["max_iter"], 1),
            "tol": check_real("tol", a["tol"], 0.0),
            "sample_size": check_int("sample_size", a["sample_size"], 1),
            "n_init": check_int("n_init", a["n_init"], 1),
        }
        spacing = check_spacing(a["spacing"], len(image.spatial_shape))
        color_space = check_color_space(a["color_space"], image.n_channels)
        filters = check_features(a["features"], a["sigma"], spacing)
        if filters is not None and color_space == "lab":
            raise ValueError(
                "color_space='lab' cannot be combined with sigma or features yet: cluster the "
                "RGB values (color_space='rgb')."
            )
        check_width(filters, image.spatial_shape)
        n_pixels = math.prod(image.spatial_shape)
        if n_clusters > n_pixels:
            raise ValueError(
                f"n_clusters={n_clusters} is larger than the number of pixels ({n_pixels})."
            )
        n_values = image.n_channels if filters is None else filters.n_columns(image.n_channels)
        n_features = n_values + (len(spacing) if spatial_weight > 0 else 0)
        init = check_init(a["init"], n_clusters, n_features)
        random_state = a["random_state"]
        if random_state is not None and not isinstance(random_state, np.random.Generator):
            if isinstance(random_state, bool) or not isinstance(random_state, Integral):
                raise TypeError(
                    "random_state must be an integer >= 0, a numpy.random.Generator or None, "
                    f"got {random_state!r}."
                )
            check_int("random_state", random_state, 0)
        return cls(
            n_clusters, spatial_weight, spacing, color_space, init, random_state=random_state,
            filters=filters, **numbers,
        )  # fmt: skip


def check_color_space(color_space, n_channels: int) -> str:
    if color_space not in COLOR_SPACES:
        raise ValueError(f"color_space must be one of {COLOR_SPACES}, got {color_space!r}.")
    if color_space == "lab" and n_channels != 3:
        raise ValueError(
            f"color_space='lab' needs an RGB image (3 colour channels), got {n_channels} "
            "channel(s)."
        )
    return color_space


def check_init(init, n_clusters: int, n_features: int):
    """``init`` as given (a name), or as a float64 array of shape (n_clusters, n_features)."""
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or an array, got {init!r}.")
        return init
    try:
        if init is None:
            raise TypeError
        init = np.asarray(init, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"init must be one of {INITS} or an array of initial centres, got {init!r}."
        ) from err
    if init.shape != (n_clusters, n_features):
        raise ValueError(
            f"init as an array must be finite with shape (n_clusters, n_features) = "
            f"({n_clusters}, {n_features}), got shape {init.shape}."
        )
    if not np.isfinite(init).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(init))[0])
        raise ValueError(
            f"init as an array must be finite, got {init[bad]} at {bad} (centre, feature)."
        )
    return init


def fit_overlap(image: Image, filters: Filters | None) -> Image:
    """The image with every chunk at least as long as the filters' overlap along each axis
    cut into several chunks (a short chunk joins its neighbour), so that each chunk can be
    read with the overlap from its neighbours alone."""
    if filters is None:
        return image
    spatial = image.data.chunks[:-1]
    chunks = tuple(merged_chunks(c, h) for c, h in zip(spatial, filters.halo, strict=True))
    if chunks == spatial:
        return image
    data = image.data.rechunk((*chunks, image.data.chunks[-1]))
    mask = None if image.mask is None else image.mask.rechunk(chunks)
    return Image(data, mask, image.layout, image.dtype, image.lazy)
