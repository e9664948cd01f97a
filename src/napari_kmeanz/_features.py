"""The features stage: a chunk of the image becomes the rows of its pixels' features.

Every pass reads pixels through this module and ``_rows``, which builds the rows of a
chunk's tiles from the features defined here; nothing else knows how a pixel becomes a point.
A pixel is a point of two kinds of features:

- *position*: its coordinates in the image (the chunk's offset plus its place in the chunk),
  times ``spacing * spatial_scale``; left out when ``spatial_scale`` is 0;
- *values*: its channel values (alpha left out), as they are, shifted by an origin, or as
  CIE Lab (:meth:`FeatureSpace.values`).

The passes work on *raw rows*: the coordinates and value features before the per-feature
``factor`` (:attr:`FeatureSpace.factor`) that turns them into feature units, followed by a
ones column (its sum is the count). Sums of raw rows of an integer image are exact float64
integers, whatever the chunking. :meth:`FeatureSpace.image_values` says what the value part
of a centre means in the image's own units.

:class:`Chunk` is what a task holds: a block of the image, its mask and its offset. A kind
of feature that needs a pixel's neighbours (smoothing, edges, texture: ``_filters``) reads
them from an overlap around the chunk; the passes take their rows from ``_rows.TileRows`` and
``_rows.chunk_rows`` whatever the features are.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field

import numpy as np

from ._color import lab_to_rgb, rgb_to_lab
from ._filters import Filters
from ._grid import TileGrid

# Values up to this magnitude, or this many times their spread, are clustered as they are
# (FeatureSpace.origin 0): the rounding of a distance is then below 1e-9 of the squared spread
# for 16-bit values, and 1e-10 for spread-relative ones.
ORIGIN_FREE_MAGNITUDE = float(1 << 16)
ORIGIN_FREE_RATIO = 1024.0


# A run with filters keeps each chunk's filtered columns in a temporary file once the first
# pass has computed them, and the later passes read them back (mapped, a chunk at a time:
# the memory stays bounded by the chunk), if the files take at most FEATURE_CACHE_BYTES and
# at most half the free space of the temporary folder; otherwise each pass computes them
# again. The columns are the same numbers either way (tile by tile, in column_dtype), and so
# are the results. Measured on a 2048x2048 photo with the six kinds at sigma 1
# (benchmarks/bench_segment.py): a round took 4.7-4.9x a round on the raw values with the
# columns as float64 in the chunk's layout, 3.9x tile by tile as float32 (one copy a batch
# of tiles, half the bytes), against 133x computed again each pass.
FEATURE_CACHE_BYTES = 1 << 34


@dataclass(frozen=True, eq=False)
class FeatureCache:
    """Where a run keeps the filtered columns of its chunks (see FEATURE_CACHE_BYTES): a
    temporary folder, removed by :meth:`close`. A chunk whose files are missing (a worker on
    another machine, a folder removed) is computed again."""

    folder: str
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def open(cls, n_pixels: int, n_columns: int, itemsize: int = 8) -> FeatureCache | None:
        """A cache for ``n_pixels`` pixels of ``n_columns`` columns of ``itemsize`` bytes,
        or None where they do not fit (see FEATURE_CACHE_BYTES)."""
        size = n_pixels * (itemsize * n_columns + 1)
        try:
            free = shutil.disk_usage(tempfile.gettempdir()).free
            if size > min(FEATURE_CACHE_BYTES, free // 2):
                return None
            return cls(tempfile.mkdtemp(prefix="napari-kmeanz-features-"))
        except OSError:  # no temporary folder to write to: computed in every pass
            return None

    def __dask_tokenize__(self):
        return self.token

    def holds(self, offset) -> bool:
        """Whether the chunk at ``offset`` has its files (it may still lose them)."""
        return all(os.path.exists(path) for path in self._paths(offset))

    def _paths(self, offset):
        name = os.path.join(self.folder, "-".join(map(str, offset)))
        return f"{name}.npy", f"{name}-valid.npy"

    def load(self, offset):
        """The chunk's ``(columns, valid)``, mapped from its files, or None. Plain arrays
        over the mapping: ``np.memmap``'s own indexing cost a pass a third of its time."""
        columns, valid = self._paths(offset)
        try:
            found = np.load(columns, mmap_mode="r"), np.load(valid, mmap_mode="r")
        except (OSError, ValueError, EOFError):  # missing, or not (whole) column files
            return None
        return tuple(array.view(np.ndarray) for array in found)

    def store(self, offset, columns: np.ndarray, valid: np.ndarray) -> None:
        """Keep the chunk's columns (whole files only: written aside, then renamed)."""
        if not os.path.isdir(self.folder):
            return
        for path, array in zip(self._paths(offset), (columns, valid), strict=True):
            part = f"{path}.{uuid.uuid4().hex}.part"
            try:
                with open(part, "wb") as file:
                    np.save(file, array, allow_pickle=False)
                os.replace(part, path)
            except OSError:  # a full disk, a folder removed: computed again next time
                if os.path.exists(part):
                    os.remove(part)
                return

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Deferred:
    """A chunk's block (or its mask's) left unread: its shape and dtype, and the dask array
    that reads it, computed in the chunk's task (on its thread) only if the task needs the
    pixels. A pass whose chunks have their filters' columns in the run's cache reads those
    and not the image: on an 8192x8192 zarr photo with sigma=2, reading the image again
    (and its overlaps) took a third of each round."""

    __slots__ = ("array", "dtype", "ndim", "shape")

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim

    def __dask_tokenize__(self):
        return ("deferred", self.array.name)

    @staticmethod
    def read(part):
        """``part`` as an array: read now when it is deferred."""
        return part.array.compute(scheduler="sync") if isinstance(part, Deferred) else part


@dataclass(frozen=True, eq=False)
class Chunk:
    """One chunk of the image, as the task that reads it holds it.

    Attributes
    ----------
    block : ndarray of shape (*spatial, channels)
        The chunk's pixels (with ``depth`` pixels of its neighbours on each side); the last
        channel is alpha when ``alpha`` is true. With filters, it may be :class:`Deferred`.
    mask : ndarray of shape (*spatial,) or None
        Non-zero where the chunk's pixels are clustered (None: all of them); no overlap.
        With filters, it may be :class:`Deferred`.
    offset : tuple of int
        The index of the chunk's first pixel in the image.
    alpha : bool
    filters : Filters or None
        The value features that need neighbours (None: the channel values as they are).
    depth : tuple of int
        Pixels of overlap read around the chunk, per spatial axis (see ``_filters.depths``).
    cache : FeatureCache or None
        Where the run keeps the filters' columns between passes.
    """

    block: np.ndarray
    mask: np.ndarray | None
    offset: tuple[int, ...]
    alpha: bool
    filters: Filters | None = None
    depth: tuple[int, ...] = ()
    cache: FeatureCache | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The chunk's spatial shape."""
        if not self.depth:
            return self.block.shape[:-1]
        return tuple(n - 2 * d for n, d in zip(self.block.shape[:-1], self.depth, strict=True))

    def place(self, whole: np.ndarray) -> np.ndarray:
        """The chunk's own part (a view) of ``whole``, an array of the image's spatial shape."""
        return whole[tuple(slice(o, o + n) for o, n in zip(self.offset, self.shape, strict=True))]

    def values(self):
        """Value features (n, F) of the chunk's pixels in C order, and which of them are
        clustered (None: all of them); without filters (with them, see
        :meth:`clustered_values`)."""
        assert self.filters is None
        return chunk_values(self.block, self.mask, self.alpha)

    def clustered_values(self) -> np.ndarray:
        """Value features (n, F) of the chunk's clustered pixels, in no set order; without
        filters (with them, see :meth:`column_extrema`)."""
        assert self.filters is None
        values, valid = chunk_values(self.block, self.mask, self.alpha)
        return values if valid is None else values[valid]

    def column_extrema(self):
        """With filters: the number of clustered pixels, and each column's minimum and
        maximum over them (inf and -inf for none), reduced over the tile-major columns as
        they are: for three float32 columns of 2^20 pixels, 1.3 ms (7 ms with some pixels
        left out) against 62 ms for gathering the clustered pixels' rows first."""
        columns, valid = self._filtered
        if self._all_clustered:
            return valid.size, columns.min(axis=(0, 2)), columns.max(axis=(0, 2))
        where = valid[:, None, :]
        lows = columns.min(axis=(0, 2), where=where, initial=np.inf)
        highs = columns.max(axis=(0, 2), where=where, initial=-np.inf)
        return int(np.count_nonzero(valid)), lows, highs

    def clustered(self) -> np.ndarray | None:
        """Which of the chunk's pixels are clustered (spatial shape, bool; None: all)."""
        if self.filters is None:
            valid = chunk_values(self.block, self.mask, self.alpha)[1]
            return None if valid is None else valid.reshape(self.shape)
        grid = TileGrid.for_shape(self.shape)
        out = np.zeros(self.shape, dtype=bool)
        grid.paint(out, np.arange(grid.n_tiles), self._filtered[1], self._filtered[1])
        return out

    def pick(self, local: tuple[np.ndarray, ...]):
        """Value features (m, F) of the pixels at local coordinates ``local`` (one array per
        spatial axis), and which of them are clustered (bool, m)."""
        if self.filters is not None:
            columns, valid = self._filtered
            tiles, within = TileGrid.for_shape(self.shape).locate(local)
            return columns[tiles, :, within].astype(np.float64), valid[tiles, within]
        picked = self.block[local]
        mask = None if self.mask is None else self.mask[local][:, None]
        values, valid = chunk_values(picked[:, None, :], mask, self.alpha)
        return values, np.ones(len(values), bool) if valid is None else valid

    def tile_columns(self, tiles: np.ndarray, out: np.ndarray):
        """Write the filters' columns of the tiles' pixels to ``out`` (T, F, pixels), and
        return which of them are clustered ((T, pixels) bool; None: all of them)."""
        columns, valid = self._filtered
        if tiles[-1] - tiles[0] == len(tiles) - 1:  # a run of tiles: no copy but to ``out``
            part = slice(int(tiles[0]), int(tiles[-1]) + 1)
            out[...] = columns[part]
        else:
            for row, tile in enumerate(tiles.tolist()):
                out[row] = columns[tile]
            part = tiles
        return None if self._all_clustered else valid[part]

    @functools.cached_property
    def _all_clustered(self) -> bool:
        """Whether every pixel of the chunk's tiles is clustered (with filters)."""
        return bool(self._filtered[1].all())

    @functools.cached_property
    def _filtered(self):
        """The filters' columns tile by tile ((n_tiles, F, pixels) in the chunk's
        :class:`TileGrid`, as the passes' rows are laid out) and which pixels are clustered
        (n_tiles, pixels): masked out, transparent, with a value feature not finite or past
        the chunk are not. The filters work in float64; their columns are kept in
        :func:`column_dtype`, whether cached or not, so that a pass reads half as much for
        most images. Read from the run's cache when it has them; computed (and kept there)
        otherwise."""
        cached = None if self.cache is None else self.cache.load(self.offset)
        if cached is not None:
            return cached
        dtype = column_dtype(self.block.dtype)
        columns, valid = TileGrid.for_shape(self.shape).tile_major(*self._filter(), dtype)
        for f in range(columns.shape[1]):  # (no finite neighbour: not clustered)
            valid &= np.isfinite(columns[:, f])
        if self.cache is not None:
            self.cache.store(self.offset, columns, valid)
        return columns, valid

    def _filter(self):
        block, mask = Deferred.read(self.block), Deferred.read(self.mask)
        depth = self.depth or (0,) * (block.ndim - 1)
        core = tuple(slice(d, n - d) for d, n in zip(depth, block.shape[:-1], strict=True))
        values = block[..., :-1] if self.alpha else block
        halo = self.filters.halo
        pad = [(h - d, h - d) for h, d in zip(halo, depth, strict=True)]
        if any(p for p, _ in pad):  # axes dask did not overlap: the nearest pixel repeated
            values = np.pad(values, [*pad, (0, 0)], mode="edge")
        columns = self.filters.columns(values, halo)
        # masked out, transparent or missing (even smoothed from its neighbours): as without
        # filters
        _, clustered = chunk_values(block[core], mask, self.alpha)
        if clustered is None:
            return columns, np.ones(self.shape, dtype=bool)
        return columns, clustered.reshape(self.shape)


@dataclass(frozen=True)
class FeatureSpace:
    """How a pixel becomes a point.

    A pixel at integer coordinates ``(i_0, ..., i_{n-1})`` with values ``(v_0, ..., v_{C-1})``
    becomes ``(i_0 * spacing_0 * spatial_scale, ..., v_0, ..., v_{C-1})``. With
    ``spatial_scale == 0`` the position features are left out and the point is its values alone.
    With ``filters``, the values are the filters' columns (smoothed values, edges, texture:
    see ``_filters``), each kind times its weight.

    Attributes
    ----------
    spacing : tuple of float
        Physical size of a pixel along each spatial axis.
    spatial_scale : float
        Feature units per physical unit of position.
    n_channels : int
        Number of channels (alpha excluded); without filters, the value features.
    color_space : {'rgb', 'lab'}
        'rgb': the values as they are; 'lab': RGB values as CIE L*a*b*.
    value_top : float
        Full scale of the values (the dtype's maximum, or 1.0 for floats), for 'lab'.
    origin : float
        Subtracted from every 'rgb' value: 0, unless the values sit far from zero compared
        with their spread (see :func:`value_origin`), where distances computed from raw values
        would lose their precision. Centres are in these shifted units; colours are not.
        With filters, subtracted from the columns that move with the values (``shifted``:
        "value" and "gaussian"), and the differences of values are left as they are.
    filters : Filters, optional
        The value features that need a pixel's neighbours; None: the channel values.
    weights : tuple of float, optional
        With ``filters``, the weight of each value feature (its raw-to-feature scale): 1 for
        the colour kind (0 when it is there for the colours alone), and for every other kind
        the values' range over the kind's own, so that each kind weighs as much as the
        values do.
    """

    spacing: tuple[float, ...]
    spatial_scale: float
    n_channels: int
    color_space: str = "rgb"
    value_top: float = 1.0  # full scale of the values (255 for 8-bit), for colour conversion
    origin: float = 0.0
    filters: Filters | None = None
    weights: tuple[float, ...] | None = None

    @property
    def raw_values(self) -> bool:
        """Whether the value features are the raw channel values as they are."""
        return self.color_space == "rgb" and not self.origin

    @property
    def shifted(self):
        """The value features ``origin`` is subtracted from: all of them, or with filters the
        columns of the kinds that move with the values (see ``Filters.shifted``)."""
        return slice(None) if self.filters is None else self.filters.shifted(self.n_channels)

    def values(self, raw: np.ndarray) -> np.ndarray:
        """Value features of raw channel values (n, C): as they are, shifted, or CIE Lab;
        with filters, of the filters' columns (n, F)."""
        if self.color_space == "lab":
            return rgb_to_lab(raw, self.value_top)
        if not self.origin:
            return raw
        if self.filters is not None:
            shifted = np.array(raw, dtype=np.float64)
            shifted[:, self.shifted] -= self.origin
            return shifted
        if raw.dtype.kind in "iu":  # in the integers' own dtype, exactly
            return (raw - raw.dtype.type(int(self.origin))).astype(np.float64)
        return raw - self.origin

    def image_values(self, values: np.ndarray) -> np.ndarray:
        """Value features (k, n_values) back in the image's own units (k, C): with filters,
        the colour kind's columns."""
        if self.filters is not None:  # (the colour kind's columns move with the values)
            colours = values[:, : self.n_channels]
            return colours + self.origin if self.origin else colours
        if self.color_space == "lab":
            return lab_to_rgb(values, self.value_top)
        return values + self.origin if self.origin else values

    @property
    def n_values(self) -> int:
        """Number of value features: the channels, or the filters' columns."""
        if self.filters is None:
            return self.n_channels
        return self.filters.n_columns(self.n_channels)

    @property
    def n_spatial(self) -> int:
        return len(self.spacing) if self.spatial_scale > 0 else 0

    @property
    def n_features(self) -> int:
        return self.n_spatial + self.n_values

    @property
    def factor(self) -> np.ndarray:
        """Raw-to-feature scale of each feature: ``spacing * spatial_scale``, then ones (or
        the value features' ``weights``)."""
        spatial = np.asarray(self.spacing[: self.n_spatial], dtype=np.float64)
        values = np.ones(self.n_values) if self.weights is None else np.asarray(self.weights)
        return np.concatenate([spatial * self.spatial_scale, values])


def value_extent(vmin, vmax) -> tuple[float, float]:
    """The largest magnitude of values between ``vmin`` and ``vmax`` (per channel), and the
    widest channel's spread."""
    low = np.asarray(vmin, dtype=np.float64)
    high = np.asarray(vmax, dtype=np.float64)
    return float(np.max(np.maximum(np.abs(low), np.abs(high)))), float(np.max(high - low))


def value_origin(vmin, vmax) -> float:
    """The origin of the value features for values between ``vmin`` and ``vmax``.

    Distances are computed as ``|x|**2 - 2 x.c + |c|**2``, whose rounding grows with the
    values' magnitude: for values far from zero compared with their spread (int32 values near
    2**31 that differ by 100, say) it swamps the differences between centres. Such values are
    shifted by their minimum (an integer, so integer sums stay exact); any other image
    (8- and 16-bit, floats on 0..1) keeps origin 0.
    """
    top, spread = value_extent(vmin, vmax)
    if top <= max(ORIGIN_FREE_MAGNITUDE, ORIGIN_FREE_RATIO * spread):
        return 0.0
    return float(math.floor(float(np.min(vmin))))


def column_dtype(image_dtype) -> np.dtype:
    """The dtype the filters' columns are kept in (see :attr:`Chunk._filtered`): float32 for
    images of integers of up to 16 bits and of float16, whose features float32 holds to 1e-7
    of their range or better, and far from its largest number (3.4e38); float64 for any
    other: int32 values near 2**31 that differ by 100 would lose them, and the derivatives
    of float32 values (up to 3.4e38 themselves) may not fit."""
    image_dtype = np.dtype(image_dtype)
    if image_dtype.itemsize <= 2 and image_dtype.kind in "biuf":
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def chunk_values(block: np.ndarray, mask_block, alpha: bool):
    """Channel values (n, C) of a chunk and which pixels are clustered (None: all of them)."""
    flat = block.reshape(-1, block.shape[-1])
    valid = None if mask_block is None else mask_block.reshape(-1).astype(bool, copy=False)
    if alpha:
        opaque = flat[:, -1] > 0
        valid = opaque if valid is None else valid & opaque
        flat = flat[:, :-1]
    if flat.dtype.kind == "f":
        finite = np.isfinite(flat).all(axis=1)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    return flat, valid
