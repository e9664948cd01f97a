"""Pixels as points, chunk by chunk.

The image is held as a dask array with its spatial axes first and its channels last in one chunk
(``(*spatial, channels)``). Every full pass over the pixels is a map over these chunks (each task
builds the raw rows of its own pixels from its chunk's offset: coordinates are never held for the
whole image) followed by a small reduction on the client: per-cluster counts and sums, a few
per-channel minima and maxima, a histogram of colours. Passes run on whatever dask scheduler is
active, a ``dask.distributed`` client included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import dask
import dask.array as da
import numpy as np

from . import _lloyd

# Pixels per chunk when a numpy image is split for the passes.
NUMPY_CHUNK_PIXELS = 1 << 20


@dataclass(frozen=True)
class FeatureSpace:
    """How a pixel becomes a point.

    A pixel at integer coordinates ``(i_0, ..., i_{n-1})`` with values ``(v_0, ..., v_{C-1})``
    becomes ``(i_0 * spacing_0 * spatial_scale, ..., v_0, ..., v_{C-1})``. With
    ``spatial_scale == 0`` the position features are left out and the point is its values alone.

    Attributes
    ----------
    spacing : tuple of float
        Physical size of a pixel along each spatial axis.
    spatial_scale : float
        Feature units per physical unit of position.
    n_channels : int
        Number of value features (alpha excluded).
    """

    spacing: tuple[float, ...]
    spatial_scale: float
    n_channels: int

    @property
    def n_spatial(self) -> int:
        return len(self.spacing) if self.spatial_scale > 0 else 0

    @property
    def n_features(self) -> int:
        return self.n_spatial + self.n_channels

    @property
    def factor(self) -> np.ndarray:
        """Raw-to-feature scale of each feature: ``spacing * spatial_scale`` then ones."""
        spatial = np.asarray(self.spacing[: self.n_spatial], dtype=np.float64)
        return np.concatenate([spatial * self.spatial_scale, np.ones(self.n_channels)])


def _pixel_rows(values: np.ndarray, valid, offset, shape, space: FeatureSpace, start, stop):
    """Raw rows, with a ones column, of the valid pixels among flat positions [start, stop).

    Returns the rows and the flat positions (within the chunk) they came from.
    """
    flat = np.arange(start, stop)
    if valid is not None:
        flat = flat[valid[start:stop]]
    rows = np.empty((len(flat), space.n_features + 1))
    if space.n_spatial:
        stride = 1
        for axis in range(len(shape) - 1, -1, -1):
            rows[:, axis] = offset[axis] + (flat // stride) % shape[axis]
            stride *= shape[axis]
    rows[:, space.n_spatial : -1] = values[flat]
    rows[:, -1] = 1.0
    return rows, flat


def _chunk_values(block: np.ndarray, mask_block, alpha: bool):
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


def _iter_rows(block, mask_block, offset, space: FeatureSpace, alpha: bool):
    values, valid = _chunk_values(block, mask_block, alpha)
    shape = block.shape[:-1]
    for start in range(0, len(values), _lloyd.SUB_BLOCK):
        stop = min(start + _lloyd.SUB_BLOCK, len(values))
        yield _pixel_rows(values, valid, offset, shape, space, start, stop)


# -- the tasks: each runs on one chunk --------------------------------------------------------


def _scan_task(block, mask_block, alpha):
    """Number of clustered pixels, and per-channel minimum and maximum over them."""
    values, valid = _chunk_values(block, mask_block, alpha)
    if valid is not None:
        values = values[valid]
    if len(values) == 0:
        return 0, None, None
    return len(values), values.min(axis=0), values.max(axis=0)


def _sample_task(block, mask_block, local, alpha):
    """Values of the pixels at the given local coordinates, and whether each is clustered."""
    picked = block[local]
    mask_picked = None if mask_block is None else mask_block[local][:, None]
    values, valid = _chunk_values(picked[:, None, :], mask_picked, alpha)
    return values, np.ones(len(values), bool) if valid is None else valid


def _stats_task(block, mask_block, offset, space, alpha, weights_matrix, want_sq):
    k = weights_matrix.shape[1]
    counts, sums = np.zeros(k), np.zeros((k, space.n_features))
    sq = np.zeros(space.n_features)
    for rows1, _ in _iter_rows(block, mask_block, offset, space, alpha):
        _lloyd.accumulate(rows1, weights_matrix, counts, sums)
        if want_sq:
            sq += np.einsum("ij,ij->j", rows1[:, :-1], rows1[:, :-1])
    return counts, sums, sq


def _farthest_task(block, mask_block, offset, space, alpha, weights_matrix, m):
    """The ``m`` clustered pixels of a chunk farthest from their nearest centre."""
    shape = block.shape[:-1]
    found = []
    for rows1, flat in _iter_rows(block, mask_block, offset, space, alpha):
        dist = _lloyd.nearest_sqdist(rows1, weights_matrix, space.factor)
        top = _lloyd.top_farthest(dist, flat, m)
        coords = np.stack(np.unravel_index(flat[top], shape), axis=-1) + np.asarray(offset)
        found.append((dist[top], coords, rows1[top, :-1]))
    if not found:
        return np.empty(0), np.empty((0, len(shape)), np.int64), np.empty((0, space.n_features))
    dist, coords, raw = (np.concatenate(parts) for parts in zip(*found, strict=True))
    top = _top_by_position(dist, coords, m)
    return dist[top], coords[top], raw[top]


def _top_by_position(dist, coords, m):
    """The ``m`` largest distances, ties broken by the smaller position (C order)."""
    return np.lexsort((*coords.T[::-1], -dist))[:m]


def _labels_task(block, mask_block, offset, space, alpha, weights_matrix, dtype):
    shape = block.shape[:-1]
    out = np.zeros(math.prod(shape), dtype=dtype)
    for rows1, flat in _iter_rows(block, mask_block, offset, space, alpha):
        out[flat] = _lloyd.assign(rows1, weights_matrix) + 1
    return out.reshape(shape)


def _codes(block, mask_block, alpha, vmin, strides):
    """Colour code of each pixel (its index in the dense colour histogram); -1: not clustered."""
    values, valid = _chunk_values(block, mask_block, alpha)
    codes = (values.astype(np.int64) - vmin) @ strides
    if valid is not None:
        codes[~valid] = -1
    return codes


def _histogram_task(block, mask_block, alpha, vmin, strides, size):
    codes = _codes(block, mask_block, alpha, vmin, strides)
    hist = np.bincount(codes[codes >= 0], minlength=size)
    return hist.astype(np.uint32) if len(codes) < 2**32 else hist


def _lookup_task(block, mask_block, offset, lut, alpha, vmin, strides):
    codes = _codes(block, mask_block, alpha, vmin, strides)
    out = np.zeros(len(codes), dtype=lut.dtype)
    hit = codes >= 0
    out[hit] = lut[codes[hit]]
    return out.reshape(block.shape[:-1])


# -- the source --------------------------------------------------------------------------------


class PixelSource:
    """The clustered pixels of an image, read chunk by chunk.

    Parameters
    ----------
    data : dask.array.Array
        Shape ``(*spatial, channels)``, the channel axis in a single chunk; the last channel is
        alpha when ``alpha`` is true.
    mask : dask.array.Array or None
        Spatial shape and chunks of ``data``; non-zero where pixels are clustered.
    alpha : bool
    space : FeatureSpace, optional
        Needed for the assignment passes; set once the value range is known.
    """

    def __init__(self, data: da.Array, mask: da.Array | None, alpha: bool):
        self.data = data
        self.mask = mask
        self.alpha = alpha
        self.space: FeatureSpace | None = None
        self._sq: np.ndarray | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.data.shape[:-1]

    def _offsets(self):
        starts = [np.cumsum((0, *c[:-1])) for c in self.data.chunks[:-1]]
        return [tuple(int(s[i]) for s, i in zip(starts, idx, strict=True)) for idx in self._ids()]

    def _ids(self):
        return list(product(*(range(len(c)) for c in self.data.chunks[:-1])))

    def _blocks(self):
        """``(chunk, mask chunk, offset)`` for every chunk, as delayed objects."""
        data = self.data.to_delayed()
        mask = None if self.mask is None else self.mask.to_delayed()
        for idx, offset in zip(self._ids(), self._offsets(), strict=True):
            yield data[(*idx, 0)], None if mask is None else mask[idx], offset

    def _map(self, task, *args, with_offset=True):
        calls = [
            dask.delayed(task, pure=True)(b, m, *((o,) if with_offset else ()), *args)
            for b, m, o in self._blocks()
        ]
        return dask.compute(*calls)

    # passes

    def scan(self):
        """Number of clustered pixels and per-channel minimum and maximum (None if none)."""
        parts = self._map(_scan_task, self.alpha, with_offset=False)
        n = sum(p[0] for p in parts)
        lows = [p[1] for p in parts if p[0]]
        highs = [p[2] for p in parts if p[0]]
        if not n:
            return 0, None, None
        return n, np.min(lows, axis=0), np.max(highs, axis=0)

    def sample(self, flat_indices: np.ndarray):
        """Raw rows (coordinates, values) of the clustered pixels among sorted flat indices."""
        coords = np.unravel_index(flat_indices, self.spatial_shape)
        bounds = [np.cumsum(c) for c in self.data.chunks[:-1]]
        block_of = [
            np.searchsorted(b, c, side="right") for b, c in zip(bounds, coords, strict=True)
        ]
        ids = self._ids()
        key = np.ravel_multi_index(block_of, [len(c) for c in self.data.chunks[:-1]])
        calls, order = [], []
        for (blk, mblk, offset), idx in zip(self._blocks(), ids, strict=True):
            flat_id = np.ravel_multi_index(idx, [len(c) for c in self.data.chunks[:-1]])
            where = np.flatnonzero(key == flat_id)
            if not len(where):
                continue
            local = tuple(c[where] - o for c, o in zip(coords, offset, strict=True))
            calls.append(dask.delayed(_sample_task, pure=True)(blk, mblk, local, self.alpha))
            order.append(where)
        parts = dask.compute(*calls)
        where = np.concatenate(order)
        values = np.concatenate([p[0] for p in parts])[np.argsort(where, kind="stable")]
        valid = np.concatenate([p[1] for p in parts])[np.argsort(where, kind="stable")]
        position = np.stack(coords, axis=-1).astype(np.float64)
        return np.concatenate([position, values.astype(np.float64)], axis=1)[valid]

    def stats(self, centers: np.ndarray, factor: np.ndarray):
        weights_matrix = _lloyd.distance_weights(centers, factor)
        want_sq = self._sq is None
        parts = self._map(_stats_task, self.space, self.alpha, weights_matrix, want_sq)
        if want_sq:
            self._sq = np.sum([p[2] for p in parts], axis=0)
        return np.sum([p[0] for p in parts], axis=0), np.sum([p[1] for p in parts], axis=0)

    def sq_total(self, factor: np.ndarray) -> float:
        if self._sq is None:
            self.stats(np.zeros((1, len(factor))), factor)
        return float(self._sq @ (factor * factor))

    def farthest(self, centers: np.ndarray, factor: np.ndarray, m: int):
        weights_matrix = _lloyd.distance_weights(centers, factor)
        parts = self._map(_farthest_task, self.space, self.alpha, weights_matrix, m)
        dist = np.concatenate([p[0] for p in parts])
        coords = np.concatenate([p[1] for p in parts])
        raw = np.concatenate([p[2] for p in parts])
        top = _top_by_position(dist, coords, m)
        return dist[top], raw[top]

    def histogram(self, vmin: np.ndarray, vmax: np.ndarray) -> np.ndarray:
        """Counts of every colour code, summed over the chunks two by two (bounded memory)."""
        span = (vmax - vmin + 1).astype(np.int64)
        strides = np.cumprod(np.concatenate([[1], span[::-1][:-1]]))[::-1].astype(np.int64)
        size = int(np.prod(span))
        parts = [
            dask.delayed(_histogram_task, pure=True)(b, m, self.alpha, vmin, strides, size)
            for b, m, _ in self._blocks()
        ]
        while len(parts) > 1:
            halves = zip(parts[::2], parts[1::2], strict=False)
            pairs = [dask.delayed(np.add)(a, b) for a, b in halves]
            parts = pairs + parts[len(pairs) * 2 :]
        return parts[0].compute(), strides

    # lazy outputs

    def _lazy(self, task, dtype, *args):
        """Map ``task(chunk, mask chunk, offset, *args)`` lazily to a spatial array."""

        def run(block, mask_block, *task_args, block_info=None):
            location = block_info[0]["array-location"][:-1]
            mask_block = None if mask_block is None else mask_block[..., 0]
            return task(block, mask_block, tuple(lo for lo, _ in location), *task_args)

        mask = None if self.mask is None else self.mask[..., None]
        return da.map_blocks(
            run,
            self.data,
            mask,
            *args,
            drop_axis=self.data.ndim - 1,
            dtype=dtype,
            meta=np.empty((0,) * (self.data.ndim - 1), dtype=dtype),
        )

    def labels(self, centers: np.ndarray, dtype) -> da.Array:
        """Lazy labels, 1 + the index of the nearest centre, 0 where pixels are not clustered."""
        weights_matrix = _lloyd.distance_weights(centers, self.space.factor)
        return self._lazy(_labels_task, dtype, self.space, self.alpha, weights_matrix, dtype)

    def lookup_labels(self, lut: np.ndarray, vmin, strides) -> da.Array:
        """Lazy labels through a colour lookup table."""
        return self._lazy(_lookup_task, lut.dtype, dask.delayed(lut), self.alpha, vmin, strides)
