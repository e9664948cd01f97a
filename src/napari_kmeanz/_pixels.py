"""The pixels of an image as a source of points, read chunk by chunk.

The image is held as a dask array with its spatial axes first and its channels last in one
chunk (``(*spatial, channels)``). Every full pass over the pixels is a map over these chunks,
each task reading one :class:`_features.Chunk`, followed by a small reduction on the client:
per-cluster counts and sums, a few per-channel minima and maxima, a histogram of colours.
Passes run on whatever dask scheduler is active, a ``dask.distributed`` client included.
"""

from __future__ import annotations

import functools
import math

import dask
import dask.array as da
import numpy as np

from . import _tiles, _watch
from ._codes import ColorCodes, dense_table, histogram_task, lookup_task, merge_histograms
from ._compute import (
    assemble,
    chunk_grid,
    compute,
    in_process,
    release_freed,
    to_numpy,
    zeros,
)
from ._features import Chunk, Deferred, FeatureSpace
from ._filters import depths
from ._kernels import distance_weights, nearest_sqdist, top_farthest
from ._rows import chunk_rows
from ._watch import bind, checkpoint

# Distances (pixels x centres) computed at a time for the margins: 32 MiB of float64.
MARGIN_DISTANCES = 1 << 22

# -- the tasks: each runs on one chunk --------------------------------------------------------


def _on_chunk(task, reading, block, mask_block, offset, held, *lazy):
    """``task(chunk, *args)`` for the chunk of these parts; ``reading`` is ``(alpha,
    filters, depth, cache)``, how every chunk of the image is read; the arguments are
    ``held`` (see :class:`_Held`), the dask collections among them computed (``lazy``)."""
    args = list(held.args)
    for at, value in zip(held.lazy, lazy, strict=True):
        args[at] = value
    return task(Chunk(block, mask_block, offset, *reading), *args)


class _Held:
    """A chunk task's arguments out of dask's sight, but for the dask collections among them
    (at the positions ``lazy``, given to dask to compute): for each call, ``dask.delayed``
    walks every argument for collections, a dataclass field by field (a pass's centres,
    feature space and tiles: 0.5 ms a chunk)."""

    __slots__ = ("args", "lazy")

    def __init__(self, args: tuple):
        self.lazy = tuple(i for i, a in enumerate(args) if dask.is_dask_collection(a))
        self.args = tuple(None if i in self.lazy else a for i, a in enumerate(args))

    def __dask_tokenize__(self):
        return dask.base.tokenize(self.lazy, *self.args)


def _channel_extrema(values: np.ndarray):
    """Per-channel minimum and maximum of (n, C) values.

    Reducing (n, C) over its first axis walks n rows of C elements; folding 1024 pixels into
    each row first makes the reduction run over long contiguous rows (many times faster).
    """
    n, c = values.shape
    fold = 1024 if n >= 1024 else 1
    head = np.ascontiguousarray(values[: n - n % fold]).reshape(-1, fold * c)
    lows = [head.min(axis=0).reshape(fold, c).min(axis=0)]
    highs = [head.max(axis=0).reshape(fold, c).max(axis=0)]
    if n % fold:
        lows.append(values[n - n % fold :].min(axis=0))
        highs.append(values[n - n % fold :].max(axis=0))
    return np.min(lows, axis=0), np.max(highs, axis=0)


def _scan_task(chunk: Chunk):
    """Number of clustered pixels, and per-channel minimum and maximum over them."""
    if chunk.filters is not None:
        return chunk.column_extrema()
    values = chunk.clustered_values()
    if len(values) == 0:
        return 0, None, None
    return len(values), *_channel_extrema(values)


def _sample_task(chunk: Chunk, local):
    """Values of the pixels at the given local coordinates, and whether each is clustered."""
    return chunk.pick(local)


def _stats_task(chunk: Chunk, space, centers, tiles=None, cache_tiles=True):
    """Per-cluster counts and raw sums of a chunk's pixels. Without the chunk's
    :class:`_tiles.ChunkTiles` (the first pass), they are found first (every tile's box kept
    with ``cache_tiles``) and returned too: ``(counts, sums, tiles)``; with them,
    ``(counts, sums)``."""
    first = tiles is None
    if first:
        tiles = _tiles.record(chunk, space, cache_tiles)
    counts, sums, _ = _tiles.chunk_pass(chunk, space, centers, tiles)
    return (counts, sums, tiles) if first else (counts, sums)


def _farthest_task(chunk: Chunk, space, centers, m):
    """The ``m`` clustered pixels of a chunk farthest from their nearest centre."""
    found = []
    for rows, coords in chunk_rows(chunk, space):
        dist = nearest_sqdist(rows, centers, space.factor)
        # ties broken by the position in the chunk (C order), as _top_by_position does
        top = top_farthest(dist, np.ravel_multi_index(coords.T, chunk.shape), m)
        found.append((dist[top], coords[top] + np.array(chunk.offset), rows[top, :-1]))
    if not found:
        ndim = len(chunk.shape)
        return np.empty(0), np.empty((0, ndim), np.int64), np.empty((0, space.n_features))
    dist, coords, raw = (np.concatenate(parts) for parts in zip(*found, strict=True))
    top = _top_by_position(dist, coords, m)
    return dist[top], coords[top], raw[top]


def _top_by_position(dist, coords, m):
    """The ``m`` largest distances, ties broken by the smaller position (C order)."""
    return np.lexsort((*coords.T[::-1], -dist))[:m]


def _labels_stats_task(chunk: Chunk, space, centers, dtype, into=None, tiles=None):
    """Labels of a chunk (1 + the nearest centre, 0 where pixels are not clustered) and its
    per-cluster counts and raw sums; the chunk's :class:`_tiles.ChunkTiles` are found first
    when not given. With ``into`` (the whole image's labels, in this process) the labels are
    written straight into the chunk's place there, and None is returned for them."""
    if tiles is None:
        tiles = _tiles.record(chunk, space)
    place = None if into is None else chunk.place(into)
    counts, sums, labels = _tiles.chunk_pass(chunk, space, centers, tiles, dtype, place)
    return (None if into is not None else labels), counts, sums


def _labels_task(chunk: Chunk, space, centers, dtype, tiles=None):
    return _labels_stats_task(chunk, space, centers, dtype, None, tiles)[0]


def _margin_task(chunk: Chunk, space, centers):
    """Each pixel's margin between its two nearest centres (see ``margins``)."""
    out = np.full(chunk.shape, np.nan, dtype=np.float32)
    weights = distance_weights(centers, space.factor)
    step = max(1, MARGIN_DISTANCES // len(centers))
    for rows, coords in chunk_rows(chunk, space):
        for start in range(0, len(rows), step):
            part, where = rows[start : start + step], coords[start : start + step]
            features = part[:, :-1] * space.factor
            d2 = part @ weights + np.einsum("ij,ij->i", features, features)[:, None]
            if len(centers) == 1:
                margin = np.ones(len(part))
            else:
                near = np.sqrt(np.maximum(np.partition(d2, 1, axis=1)[:, :2], 0.0))
                total = near[:, 0] + near[:, 1]
                margin = np.divide(near[:, 1] - near[:, 0], total, out=np.zeros(len(part)),
                                   where=total > 0)  # fmt: skip
            out[tuple(where.T)] = margin
    return out


# -- the source --------------------------------------------------------------------------------


class PixelSource:
    """The clustered pixels of an image, read chunk by chunk.

    A :class:`_lloyd.Source` once it has a feature space: the scans, the sample and the
    histogram read raw values and need none; the assignment passes need one.

    Parameters
    ----------
    data : dask.array.Array
        Shape ``(*spatial, channels)``, the channel axis in a single chunk; the last channel is
        alpha when ``alpha`` is true.
    mask : dask.array.Array or None
        Spatial shape and chunks of ``data``; non-zero where pixels are clustered.
    alpha : bool
    space : FeatureSpace, optional
        How pixels become points, for the assignment passes (see :meth:`with_space`).
    filters : Filters, optional
        The value features that need neighbours (default: the space's); each chunk is then
        read with the overlap they need.
    cache : FeatureCache, optional
        Where the filters' columns are kept between passes (a run's).
    """

    def __init__(self, data: da.Array, mask: da.Array | None, alpha: bool, space=None,
                 filters=None, cache=None):  # fmt: skip
        self.data = data
        self.mask = mask
        self.alpha = alpha
        self.space: FeatureSpace | None = space
        self.filters = filters if space is None else space.filters
        self.cache = cache if self.filters is not None else None
        self._sq: np.ndarray | None = None  # per-feature sums of squares, from the first pass
        self._tiles: list[_tiles.ChunkTiles] | None = None  # each chunk's, from the first pass

    def with_space(self, space: FeatureSpace) -> PixelSource:
        """The same pixels as points of ``space`` (a new source: what a pass learns of the
        chunks belongs to one feature space)."""
        return PixelSource(self.data, self.mask, self.alpha, space, cache=self.cache)

    @functools.cached_property
    def _depth(self) -> tuple[int, ...]:
        return depths(self.filters, self.data.chunks[:-1])

    @functools.cached_property
    def _read(self) -> da.Array:
        """The data as the tasks read it: each chunk with the overlap its filters need."""
        if not any(self._depth):
            return self.data
        depth = dict(enumerate(self._depth))
        depth[self.data.ndim - 1] = 0
        return da.overlap.overlap(self.data, depth, "nearest", allow_rechunk=False)

    @property
    def _reading(self):
        return (self.alpha, self.filters, self._depth if any(self._depth) else (), self.cache)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.data.shape[:-1]

    def _offsets(self):
        return [offset for _, offset in chunk_grid(self.data.chunks[:-1])]

    def _ids(self):
        return [idx for idx, _ in chunk_grid(self.data.chunks[:-1])]

    def _blocks(self):
        """``(chunk, mask chunk, offset)`` for every chunk, as delayed objects; left unread
        (:class:`_features.Deferred`) for a chunk whose filters' columns are in the run's
        cache (in this process: a worker elsewhere would not find them)."""
        data, mask = self._delayed
        cache = self.cache if self.cache is not None and in_process() else None
        for idx, offset in zip(self._ids(), self._offsets(), strict=True):
            if cache is not None and cache.holds(offset):
                yield *self._unread(idx), offset
            else:
                yield data[(*idx, 0)], None if mask is None else mask[idx], offset

    @functools.cached_property
    def _delayed(self):
        """The chunks (with their overlaps) and the mask's, as delayed objects: made once
        (for 1024 chunks with overlaps, 0.66 s each time)."""
        return self._read.to_delayed(), None if self.mask is None else self.mask.to_delayed()

    def _unread(self, idx):
        """The chunk at ``idx`` and its mask's, left unread (:class:`_features.Deferred`),
        made once for the source (70 us a chunk)."""
        found = self._unread_parts.get(idx)
        if found is None:
            mask = None if self.mask is None else Deferred(self.mask.blocks[idx])
            found = self._unread_parts[idx] = Deferred(self._read.blocks[(*idx, 0)]), mask
        return found

    @functools.cached_property
    def _unread_parts(self) -> dict:
        return {}

    def _call(self, task, part, *args, pure=True):
        """A delayed ``task(chunk, *args)`` for one ``(chunk, mask chunk, offset)`` of
        :meth:`_blocks`."""
        block, mask_block, offset = part
        call = bind(functools.partial(_on_chunk, task, self._reading))
        held = _Held(args)
        lazy = [args[i] for i in held.lazy]
        return dask.delayed(call, pure=pure)(block, mask_block, offset, held, *lazy)

    def _map(self, task, *args, per_chunk=None):
        """``task(chunk, *args[, per_chunk[i]])`` over the chunks, computed."""
        extra = [()] * len(self._ids()) if per_chunk is None else [(a,) for a in per_chunk]
        # tasks not named from their arguments: naming them took 8 ms a pass for 64 chunks
        calls = [
            self._call(task, part, *args, *more, pure=False)
            for part, more in zip(self._blocks(), extra, strict=True)
        ]
        return compute(*calls)

    # passes

    def _scan_calls(self):
        return [self._call(_scan_task, part) for part in self._blocks()]

    @staticmethod
    def _scan_result(parts):
        n = sum(p[0] for p in parts)
        if not n:
            return 0, None, None
        lows = [p[1] for p in parts if p[0]]
        highs = [p[2] for p in parts if p[0]]
        return n, np.min(lows, axis=0), np.max(highs, axis=0)

    def scan(self):
        """Number of clustered pixels and per-channel minimum and maximum (None if none)."""
        return self._scan_result(compute(*self._scan_calls()))

    def _sample_calls(self, flat_indices: np.ndarray):
        coords = np.unravel_index(flat_indices, self.spatial_shape)
        bounds = [np.cumsum(c) for c in self.data.chunks[:-1]]
        block_of = [
            np.searchsorted(b, c, side="right") for b, c in zip(bounds, coords, strict=True)
        ]
        grid = [len(c) for c in self.data.chunks[:-1]]
        key = np.ravel_multi_index(block_of, grid)
        # the samples of each chunk, found in one sort (not one scan of them per chunk)
        by_chunk = np.argsort(key, kind="stable")
        chunk_ids, starts = np.unique(key[by_chunk], return_index=True)
        groups = dict(zip(chunk_ids.tolist(), np.split(by_chunk, starts[1:]), strict=True))
        calls, order = [], []
        for part, idx in zip(self._blocks(), self._ids(), strict=True):
            where = groups.get(int(np.ravel_multi_index(idx, grid)))
            if where is None:
                continue
            local = tuple(c[where] - o for c, o in zip(coords, part[2], strict=True))
            calls.append(self._call(_sample_task, part, local))
            order.append(where)
        return calls, (coords, order)

    @staticmethod
    def _sample_result(parts, plan):
        coords, order = plan
        where = np.argsort(np.concatenate(order), kind="stable")
        values = np.concatenate([p[0] for p in parts])[where]
        valid = np.concatenate([p[1] for p in parts])[where]
        position = np.stack(coords, axis=-1).astype(np.float64)
        return np.concatenate([position, values.astype(np.float64)], axis=1)[valid]

    def sample(self, flat_indices: np.ndarray):
        """Raw rows (coordinates, values) of the clustered pixels among sorted flat indices."""
        calls, plan = self._sample_calls(flat_indices)
        return self._sample_result(compute(*calls), plan)

    def scan_and_sample(self, flat_indices: np.ndarray):
        """:meth:`scan` and :meth:`sample` in one pass: each chunk is read once for both."""
        scan_calls = self._scan_calls()
        sample_calls, plan = self._sample_calls(flat_indices)
        parts = compute(*scan_calls, *sample_calls)
        scanned = self._scan_result(parts[: len(scan_calls)])
        return scanned, self._sample_result(parts[len(scan_calls) :], plan)

    def stats(self, centers: np.ndarray, factor: np.ndarray):
        """Per-cluster counts and raw sums; the first pass also finds the chunks'
        :class:`_tiles.ChunkTiles` and the sums of squares."""
        if self._tiles is None:
            cache_tiles = math.prod(self.spatial_shape) <= _tiles.CACHED_PIXELS
            parts = self._map(_stats_task, self.space, centers, None, cache_tiles)
            self._tiles = [p[2] for p in parts]
            self._sq = np.sum([t.squares for t in self._tiles], axis=0)
        else:
            parts = self._map(_stats_task, self.space, centers, per_chunk=self._tiles)
        return np.sum([p[0] for p in parts], axis=0), np.sum([p[1] for p in parts], axis=0)

    def labels_and_stats(self, centers: np.ndarray, dtype):
        """Labels as a numpy array, with per-cluster counts and raw sums, in one pass (in
        this process each chunk's task writes its labels into the array: the chunks' own
        labels, then copied, held 2 bytes a pixel more at k=1000)."""
        args = (_labels_stats_task, self.space, centers, dtype)
        if in_process():
            labels = zeros(self.spatial_shape, dtype)
            parts = self._map(*args, labels, per_chunk=self._tiles)
        else:
            parts = self._map(*args, None, per_chunk=self._tiles)
            labels = assemble(self.spatial_shape, dtype, self._offsets(), [p[0] for p in parts])
        parts = [p[1:] for p in parts]
        counts = np.sum([p[0] for p in parts], axis=0)
        return labels, counts, np.sum([p[1] for p in parts], axis=0)

    def sq_total(self, factor: np.ndarray) -> float:
        if self._sq is None:
            self.stats(np.zeros((1, len(factor))), factor)
        return float(self._sq @ (factor * factor))

    def farthest(self, centers: np.ndarray, factor: np.ndarray, m: int):
        parts = self._map(_farthest_task, self.space, centers, m)
        dist = np.concatenate([p[0] for p in parts])
        coords = np.concatenate([p[1] for p in parts])
        raw = np.concatenate([p[2] for p in parts])
        top = _top_by_position(dist, coords, m)
        return dist[top], raw[top]

    def histogram(self, coder: ColorCodes):
        """The colour codes present (sorted) and their counts: the chunks' histograms
        (:func:`_codes.histogram_task`), summed two by two."""
        parts = [self._call(histogram_task, part, coder) for part in self._blocks()]
        while len(parts) > 1:
            halves = zip(parts[::2], parts[1::2], strict=False)
            pairs = [dask.delayed(merge_histograms, pure=True)(a, b) for a, b in halves]
            parts = pairs + parts[len(pairs) * 2 :]
        total = compute(parts[0])[0]
        release_freed()  # (the chunks' codes, sorted in the tasks' threads)
        if not isinstance(total, tuple):
            codes = np.flatnonzero(total)
            return codes, total[codes]
        return total[0].astype(np.int64), total[1].astype(np.int64, copy=False)

    # lazy outputs

    def _lazy(self, task, dtype, *args, per_chunk=None):
        """Map ``task(chunk, *args[, per_chunk[i]])`` lazily to a spatial array;
        ``per_chunk`` (delayed) holds one object per chunk, in C order."""
        watch = _watch.travelling()  # map_blocks needs run's own signature: no bind()
        reading = self._reading

        def run(block, mask_block, *task_args, block_info=None):
            with _watch.watching(watch):
                checkpoint()
                return on_chunk(block, mask_block, *task_args, info=block_info[None])

        def on_chunk(block, mask_block, *task_args, info):
            mask_block = None if mask_block is None else mask_block[..., 0]
            if per_chunk is not None:
                *task_args, objects = task_args
                index = np.ravel_multi_index(info["chunk-location"], info["num-chunks"])
                task_args.append(objects[index])
            offset = tuple(lo for lo, _ in info["array-location"])
            return task(Chunk(block, mask_block, offset, *reading), *task_args)[..., None]

        # The channel axis is kept (as one of length 1) and indexed away after: dropping it
        # in map_blocks makes dask concatenate each chunk's one block along it, a copy of
        # the chunk's pixels in every task (36 MiB a chunk of a 4096x6144 photo).
        mask = None if self.mask is None else self.mask[..., None]
        return da.map_blocks(
            run,
            self._read,
            mask,
            *args,
            *(() if per_chunk is None else (per_chunk,)),
            chunks=(*self.data.chunks[:-1], (1,)),
            dtype=dtype,
            meta=np.empty((0,) * self.data.ndim, dtype=dtype),
        )[..., 0]

    def labels(self, centers: np.ndarray, dtype) -> da.Array:
        """Lazy labels, 1 + the index of the nearest centre, 0 where pixels are not clustered.

        After a pass, each chunk's task starts from the chunk's :class:`_tiles.ChunkTiles`
        (held by the graph as one object for all its tasks) instead of finding them again.
        """
        args = (_labels_task, dtype, self.space, centers, dtype)
        if self._tiles is None:
            return self._lazy(*args)
        known = np.empty(len(self._tiles), dtype=object)
        known[:] = self._tiles
        return self._lazy(*args, per_chunk=dask.delayed(known, pure=False))

    def margins(self, centers: np.ndarray) -> da.Array:
        """Lazy margins of every pixel between its two nearest centres (float32)."""
        return self._lazy(_margin_task, np.float32, self.space, centers)

    def lookup_labels(self, codes, labels, coder: ColorCodes) -> da.Array:
        """Lazy labels through a colour lookup table.

        The graph holds the codes present and their labels; one task expands them into the
        dense table (``size`` entries) that every chunk reads, so the graph stays small under
        any scheduler.
        """
        return self._lazy(lookup_task, labels.dtype, _lookup_table(codes, labels, coder), coder)

    def lookup_labels_numpy(self, codes, labels, coder: ColorCodes) -> np.ndarray:
        """:meth:`lookup_labels` as a numpy array: in this process, each chunk's task writes
        its labels into the array (through ``to_numpy`` every chunk's labels were made, then
        copied: 2 bytes a pixel at once for a photo's two chunks)."""
        if not in_process():
            return to_numpy(self.lookup_labels(codes, labels, coder))
        out = zeros(self.spatial_shape, labels.dtype)
        self._map(lookup_task, _lookup_table(codes, labels, coder), coder, out)
        return out


def _lookup_table(codes, labels, coder: ColorCodes):
    """The delayed dense table from colour code to label, made once for every chunk's task;
    not named from its arguments: hashing the 1 M codes of a photo took 8 ms."""
    return dask.delayed(dense_table, pure=False)(codes, labels, coder.size)


def _centroid_task(labels, offset, k):
    counts = np.bincount(labels.ravel(), minlength=k + 1).astype(np.float64)
    sums = np.empty((k + 1, labels.ndim))
    for axis in range(labels.ndim):
        coordinate = np.arange(labels.shape[axis], dtype=np.float64) + offset[axis]
        along = [1] * labels.ndim
        along[axis] = -1
        weights = np.broadcast_to(coordinate.reshape(along), labels.shape).ravel()
        sums[:, axis] = np.bincount(labels.ravel(), weights=weights, minlength=k + 1)
    return counts, sums


def label_centroids(labels, k: int) -> np.ndarray:
    """Mean position (pixel indices) of labels 1..k, chunk by chunk; NaN for an absent label."""
    if not isinstance(labels, da.Array):
        labels = da.from_array(np.asarray(labels), chunks="auto", name=False)
    blocks = labels.to_delayed()
    calls = [
        dask.delayed(_centroid_task, pure=True)(blocks[idx], offset, k)
        for idx, offset in chunk_grid(labels.chunks)
    ]
    parts = compute(*calls)
    counts = np.sum([p[0] for p in parts], axis=0)[1:]
    sums = np.sum([p[1] for p in parts], axis=0)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]
