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
import sys
from dataclasses import dataclass
from itertools import product

import dask
import dask.array as da
import dask.threaded
import numpy as np

from . import _lloyd, _tiles, _watch
from ._color import lab_to_rgb, rgb_to_lab
from ._lloyd import zeros
from ._tiles import chunk_values
from ._watch import bind, checkpoint

# Most possible colours (codes) for the colour-only fast path: its labels come through a table
# with an entry for each.
MAX_HISTOGRAM = 1 << 24
# Up to this many possible colours (and no more than 4 per pixel of a chunk), a chunk's colours
# are counted into a table (np.add.at), not sorted: for a chunk of 4 M pixels of 16-bit grey,
# 4 ms against 20 ms.
DENSE_HISTOGRAM = 1 << 20
# Pixels per tile when colour codes are computed.
CODE_TILE = 1 << 16
# Values up to this magnitude, or this many times their spread, are clustered as they are
# (FeatureSpace.origin 0): the rounding of a distance is then below 1e-9 of the squared spread
# for 16-bit values, and 1e-10 for spread-relative ones.
ORIGIN_FREE_MAGNITUDE = float(1 << 16)
ORIGIN_FREE_RATIO = 1024.0
# Pixels per chunk when a numpy image is split for the passes.
NUMPY_CHUNK_PIXELS = 1 << 22


def compute(*collections):
    """``dask.compute`` with BLAS held to one thread in this process.

    The passes run many small matrix products, one per batch of tiles, in several dask threads
    at once; a multi-threaded BLAS inside each of them only oversubscribes the cores (measured:
    a pass over 16.7 M pixels took 1.08 s with it, 0.44 s without, on 2 cores). Worker processes
    of a ``dask.distributed`` cluster already run with one BLAS thread.

    Without a scheduler set in dask's config, dask looks for a ``dask.distributed`` client by
    importing ``distributed`` (0.2 s in a fresh process); no client can exist before that
    package is imported, so the threaded scheduler is then named at once.
    """
    options = {}
    if "distributed" not in sys.modules and not dask.config.get("scheduler", None):
        options["scheduler"] = dask.threaded.get
    with _lloyd.one_blas_thread():
        return dask.compute(*collections, **options)


def to_numpy(array: da.Array) -> np.ndarray:
    """A dask array computed into one numpy array, each chunk written to its place.

    The array's memory is a fresh map of its own (see :func:`_lloyd.zeros`), not numpy's
    allocation, which on systems that defragment for huge pages on request can stall at the
    first touch (measured on a 4096x4096 label image: about 30 ms of a 0.55 s run).
    """
    offsets = [offset for _, offset in _chunk_grid(array.chunks)]
    return _assemble(array.shape, array.dtype, offsets, compute(*array.to_delayed().ravel()))


def _assemble(shape, dtype, offsets, parts) -> np.ndarray:
    """One array (memory from :func:`_lloyd.zeros`) holding each part at its offset."""
    out = zeros(shape, dtype)
    for offset, part in zip(offsets, parts, strict=True):
        out[tuple(slice(o, o + n) for o, n in zip(offset, part.shape, strict=True))] = part
    return out


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
    color_space : {'rgb', 'lab'}
        'rgb': the values as they are; 'lab': RGB values as CIE L*a*b*.
    value_top : float
        Full scale of the values (the dtype's maximum, or 1.0 for floats), for 'lab'.
    origin : float
        Subtracted from every 'rgb' value: 0, unless the values sit far from zero compared
        with their spread (see :func:`value_origin`), where distances computed from raw values
        would lose their precision. Centres are in these shifted units; colours are not.
    """

    spacing: tuple[float, ...]
    spatial_scale: float
    n_channels: int
    color_space: str = "rgb"
    value_top: float = 1.0  # full scale of the values (255 for 8-bit), for colour conversion
    origin: float = 0.0

    @property
    def raw_values(self) -> bool:
        """Whether the value features are the raw channel values as they are."""
        return self.color_space == "rgb" and not self.origin

    def values(self, raw: np.ndarray) -> np.ndarray:
        """Value features of raw channel values (n, C): as they are, shifted, or CIE Lab."""
        if self.color_space == "lab":
            return rgb_to_lab(raw, self.value_top)
        if not self.origin:
            return raw
        if raw.dtype.kind in "iu":  # in the integers' own dtype, exactly
            return (raw - raw.dtype.type(int(self.origin))).astype(np.float64)
        return raw - self.origin

    def image_values(self, values: np.ndarray) -> np.ndarray:
        """Value features (k, C) back in the image's own units."""
        if self.color_space == "lab":
            return lab_to_rgb(values, self.value_top)
        return values + self.origin if self.origin else values

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


def _chunk_grid(chunks: tuple[tuple[int, ...], ...]):
    """``(index, offset)`` of every chunk of a dask array with these ``chunks`` (per axis, the
    chunk sizes), in C order: the chunk's index in the grid and the index of its first pixel."""
    starts = [np.cumsum((0, *c[:-1])) for c in chunks]
    return [
        (idx, tuple(int(s[i]) for s, i in zip(starts, idx, strict=True)))
        for idx in product(*(range(len(c)) for c in chunks))
    ]


# -- the tasks: each runs on one chunk --------------------------------------------------------


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


def _scan_task(block, mask_block, alpha):
    """Number of clustered pixels, and per-channel minimum and maximum over them."""
    values, valid = chunk_values(block, mask_block, alpha)
    if valid is not None:
        values = values[valid]
    if len(values) == 0:
        return 0, None, None
    return len(values), *_channel_extrema(values)


def _sample_task(block, mask_block, local, alpha):
    """Values of the pixels at the given local coordinates, and whether each is clustered."""
    picked = block[local]
    mask_picked = None if mask_block is None else mask_block[local][:, None]
    values, valid = chunk_values(picked[:, None, :], mask_picked, alpha)
    return values, np.ones(len(values), bool) if valid is None else valid


def _stats_task(block, mask_block, offset, space, alpha, centers, tiles=None, keep_tiles=True):
    """Per-cluster counts and raw sums of a chunk's pixels. Without the chunk's
    :class:`_tiles.ChunkTiles` (the first pass), they are found first (every tile's box kept
    with ``keep_tiles``) and returned too: ``(counts, sums, tiles)``; with them,
    ``(counts, sums)``."""
    first = tiles is None
    if first:
        tiles = _tiles.record(block, mask_block, offset, space, alpha, keep_tiles)
    counts, sums, _ = _tiles.chunk_pass(block, mask_block, offset, space, alpha, centers, tiles)
    return (counts, sums, tiles) if first else (counts, sums)


def _farthest_task(block, mask_block, offset, space, alpha, centers, m):
    """The ``m`` clustered pixels of a chunk farthest from their nearest centre."""
    found, shape = [], block.shape[:-1]
    for rows1, coords in _tiles.pixel_rows(block, mask_block, offset, space, alpha):
        dist = _lloyd.nearest_sqdist(rows1, centers, space.factor)
        # ties broken by the position in the chunk (C order), as _top_by_position does
        top = _lloyd.top_farthest(dist, np.ravel_multi_index(coords.T, shape), m)
        found.append((dist[top], coords[top] + np.array(offset), rows1[top, :-1]))
    if not found:
        ndim = block.ndim - 1
        return np.empty(0), np.empty((0, ndim), np.int64), np.empty((0, space.n_features))
    dist, coords, raw = (np.concatenate(parts) for parts in zip(*found, strict=True))
    top = _top_by_position(dist, coords, m)
    return dist[top], coords[top], raw[top]


def _top_by_position(dist, coords, m):
    """The ``m`` largest distances, ties broken by the smaller position (C order)."""
    return np.lexsort((*coords.T[::-1], -dist))[:m]


def _labels_stats_task(block, mask_block, offset, space, alpha, centers, dtype, tiles=None):
    """Labels of a chunk (1 + the nearest centre, 0 where pixels are not clustered) and its
    per-cluster counts and raw sums; the chunk's :class:`_tiles.ChunkTiles` are found first
    when not given."""
    if tiles is None:
        tiles = _tiles.record(block, mask_block, offset, space, alpha)
    counts, sums, labels = _tiles.chunk_pass(
        block, mask_block, offset, space, alpha, centers, tiles, dtype
    )
    return labels, counts, sums


def _labels_task(block, mask_block, offset, space, alpha, centers, dtype, tiles=None):
    return _labels_stats_task(block, mask_block, offset, space, alpha, centers, dtype, tiles)[0]


@dataclass(frozen=True, eq=False)
class ColorCodes:
    """Integer colours as codes ``0 .. size - 1``, the indices of a dense colour histogram.

    A colour's code is its index in the box of all colours between the per-channel minima and
    maxima, the first channel varying fastest: ``sum((v_c - vmin_c) * stride_c)``. For 8-bit
    RGB over the whole range, that is the pixel's three bytes read as one little-endian
    integer, and pixels are encoded that way, without arithmetic per channel.

    The order of codes runs along the first channel; :meth:`morton_keys` gives, for a few
    colours, keys whose order runs through compact cubes of colour space (a Z-order or Morton
    code, the channels' bits interleaved), which is what lets the kernels leave far centres
    out of a block of colours.

    Build one with :meth:`for_range`; there is none for more than ``MAX_HISTOGRAM`` colours.
    """

    vmin: np.ndarray  # (C,) int64
    span: np.ndarray  # (C,) int64: the number of values of each channel
    strides: np.ndarray  # (C,) int64
    size: int
    spread: tuple[tuple[np.ndarray, ...], ...]  # see _spread_tables

    @classmethod
    def for_range(cls, vmin: np.ndarray, vmax: np.ndarray) -> ColorCodes | None:
        """Codes of the colours between ``vmin`` and ``vmax`` (per channel), or None when they
        are more than ``MAX_HISTOGRAM``."""
        # in Python integers: the range of a 64-bit image overflows int64
        lows = [int(v) for v in np.asarray(vmin).ravel()]
        spans = [int(h) - low + 1 for h, low in zip(np.asarray(vmax).ravel(), lows, strict=True)]
        if math.prod(spans) > MAX_HISTOGRAM or not all(-(2**62) < v < 2**62 for v in lows):
            return None
        vmin = np.array(lows, dtype=np.int64)
        span = np.array(spans, dtype=np.int64)
        size = math.prod(spans)
        strides = np.cumprod(np.concatenate([[1], span[:-1]])).astype(np.int64)
        return cls(vmin, span, strides, size, _spread_tables(span))

    @property
    def _rgb_bytes(self) -> bool:
        """Whether a code is the colour's three bytes (8-bit RGB over the whole range)."""
        return len(self.span) == 3 and not self.vmin.any() and bool((self.span == 256).all())

    def encode(self, values: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """Codes of integer colours (n, C) written to ``out`` (integers, n), using ``scratch``
        (int64, n)."""
        if self._rgb_bytes and values.dtype == np.uint8 and _bytes_as_codes(values, out):
            return out
        out[...] = 0
        for channel, (low, stride) in enumerate(zip(self.vmin, self.strides, strict=True)):
            # in the values' own dtype: exact (modulo 2**bits) for 64-bit integers too, and
            # ``v - vmin`` is less than MAX_HISTOGRAM
            lowest = values.dtype.type(low)
            np.subtract(values[:, channel], lowest, out=scratch, casting="unsafe")
            if stride > 1:
                scratch *= stride
            out += scratch
        return out

    def _channel(self, codes: np.ndarray, channel: int, out: np.ndarray) -> np.ndarray:
        """Each code's value of one channel, less the channel's minimum, written to ``out``."""
        span, stride = int(self.span[channel]), int(self.strides[channel])
        if span & (span - 1) == 0 and stride & (stride - 1) == 0:  # powers of two: bits
            np.right_shift(codes, stride.bit_length() - 1, out=out)
            out &= span - 1
        else:
            np.floor_divide(codes, stride, out=out)
            out %= span
        return out

    def decode(self, codes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Colours (n, C) of codes: int64 (each channel contiguous), or written to ``out``
        ((C, n), any numeric dtype) and returned as its transpose."""
        codes = np.asarray(codes, dtype=np.int64)
        values = np.empty((len(self.span), len(codes)), dtype=np.int64) if out is None else out
        part = np.empty(len(codes), dtype=np.int64)
        for channel in range(len(self.span)):
            self._channel(codes, channel, part)
            np.add(part, self.vmin[channel], out=values[channel])
        return values.T

    def z_ordered(self, codes: np.ndarray):
        """Distinct ``codes`` sorted by the :meth:`morton_keys` of their colours.

        Returns ``(codes, keys, order)``: the codes in that order, their keys, and their
        positions in the codes given. The keys are found from the codes channel by channel,
        and the codes are decoded only once sorted, where the reads run in order (measured on
        the 1.1 M colours of a 4096x4096 photo: about half the time of sorting decoded
        colours).
        """
        codes = np.asarray(codes, dtype=np.int64)
        offset = np.empty(len(codes), dtype=np.int64)
        channels = (self._channel(codes, c, offset) for c in range(len(self.span)))
        keys = self._spread(channels, len(codes))
        n_bits = max(1, (len(codes) - 1).bit_length())
        if int(keys.max(initial=0)) < 1 << (63 - n_bits):  # key and position in one int64
            keys <<= n_bits
            keys |= np.arange(len(keys))
            keys.sort()
            order = keys & ((1 << n_bits) - 1)
            keys >>= n_bits
        else:
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
        return codes[order], keys, order

    def morton_keys(self, values: np.ndarray) -> np.ndarray:
        """Z-order keys (int64) of colours (n, C): the bits of each channel's ``v - vmin``,
        interleaved from the lowest, so that the colours sharing ``key >> (b * C)`` lie in a
        cube of side ``2**b`` (for channels of at least ``b`` bits)."""
        offset = np.empty(len(values), dtype=np.int64)
        channels = (
            np.subtract(values[:, c], self.vmin[c], out=offset) for c in range(len(self.span))
        )
        return self._spread(channels, len(values))

    def _spread(self, offsets, n: int) -> np.ndarray:
        """Z-order keys of ``n`` colours from each channel's ``v - vmin`` in turn (int64
        arrays, which may be one array reused)."""
        keys, part = np.zeros(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        for tables, offset in zip(self.spread, offsets, strict=True):
            for byte, table in enumerate(tables):
                np.right_shift(offset, 8 * byte, out=part)
                part &= 255
                keys += table[part]
        return keys


def _spread_tables(span: np.ndarray) -> tuple[tuple[np.ndarray, ...], ...]:
    """For Z-order keys of colours with ``span`` values per channel: per channel, per byte of
    the channel's value, the table from the byte to its bits at their places in the key."""
    bits = [max(0, int(n - 1).bit_length()) for n in span]
    place, position = {}, 0
    for bit in range(max(bits, default=0)):
        for channel, n_bits in enumerate(bits):
            if bit < n_bits:
                place[channel, bit] = position
                position += 1
    byte = np.arange(256, dtype=np.int64)
    tables = []
    for n_bits in bits:
        per_byte = []
        for first in range(0, max(n_bits, 1), 8):
            table = np.zeros(256, dtype=np.int64)
            for bit in range(first, min(first + 8, n_bits)):
                table |= ((byte >> (bit - first)) & 1) << place[len(tables), bit]
            per_byte.append(table)
        tables.append(tuple(per_byte))
    return tuple(tables)


def _bytes_as_codes(values: np.ndarray, out: np.ndarray) -> bool:
    """Write the code ``R | G << 8 | B << 16`` of 8-bit RGB values (n, 3) to ``out``, reading
    each pixel's bytes as one little-endian integer; False where their layout does not allow
    it (each pixel's three bytes contiguous, pixels 3 or 4 bytes apart: RGB or RGBA).

    Measured on 8.4 M pixels: 5 ms, against 36 ms through per-channel arithmetic.
    """
    step = values.strides[0]
    if values.strides[1] != 1 or step not in (3, 4) or len(values) < 2:
        return False
    # the 4 bytes from each pixel's first: past the end for the last pixel, 3 bytes apart
    n = len(values) - (step == 3)
    interface = {
        "data": (values.__array_interface__["data"][0], True),
        "shape": (n,),
        "strides": (step,),
        "typestr": "<u4",
        "version": 3,
    }
    words = np.asarray(_Interface(interface, values))
    np.bitwise_and(words, 0xFFFFFF, out=out[:n], casting="unsafe")
    if n < len(values):
        r, g, b = (int(v) for v in values[-1])
        out[-1] = r | g << 8 | b << 16
    return True


class _Interface:
    """An array interface over memory that ``owner`` holds (and keeps alive)."""

    def __init__(self, interface: dict, owner: np.ndarray):
        self.__array_interface__ = interface
        self.owner = owner


def _tile_codes(block, mask_block, alpha, coder: ColorCodes, tile: int = CODE_TILE, out=None):
    """Colour codes of a chunk's pixels, a tile of pixels at a time.

    Yields ``(span, codes, valid)``: the slice of the chunk's pixels (in C order) the tile
    covers, their codes (intp, as indices need them: a buffer reused from tile to tile; with
    ``out``, an array for every pixel's code, written there) and which of them are clustered
    (None: all of them). Working in tiles keeps every temporary small.
    """
    values, valid = chunk_values(block, mask_block, alpha)
    buffer = np.empty(tile, dtype=np.intp) if out is None else None
    scratch = np.empty(min(tile, len(values)), dtype=np.int64)
    for start in range(0, len(values), tile):
        checkpoint()
        part = values[start : start + tile]
        span = slice(start, start + len(part))
        target = buffer[: len(part)] if out is None else out[span]
        codes = coder.encode(part, target, scratch[: len(part)])
        yield span, codes, None if valid is None else valid[span]


def _histogram_task(block, mask_block, alpha, coder):
    """A chunk's colour histogram: its distinct codes (sorted) and their counts, or for few
    possible codes the counts of every code.

    The chunk's codes are sorted and counted run by run. Measured on the 4096x4096 photo in
    two chunks: 58 ms on two threads, against 144 ms for counting into a table of every code
    with ``np.add.at`` (two 64 MiB tables, which gained nothing from the second thread; and
    they needed a merge and a search for the codes present). Where there are few possible
    codes (up to ``DENSE_HISTOGRAM``, as for 16-bit grey), they are counted into a table.
    """
    n = math.prod(block.shape[:-1])
    if coder.size <= min(DENSE_HISTOGRAM, 4 * n):  # a small table, in cache
        counts, one = np.zeros(coder.size, dtype=np.int64), np.ones(1, dtype=np.int64)
        for _, codes, clustered in _tile_codes(block, mask_block, alpha, coder):
            np.add.at(counts, codes if clustered is None else codes[clustered], one)
        return counts
    codes = np.empty(n, dtype=np.int32)  # codes < MAX_HISTOGRAM
    clustered = [c for _, _, c in _tile_codes(block, mask_block, alpha, coder, out=codes)]
    if clustered[0] is not None:
        codes = codes[np.concatenate(clustered)]
    codes.sort()
    return _runs(codes)


def _runs(codes: np.ndarray, counts: np.ndarray | None = None):
    """The distinct values of sorted ``codes`` and how many times each appears (with
    ``counts``, the sum of the counts of its copies)."""
    starts = np.empty(len(codes), dtype=bool)  # where a run of equal codes starts
    starts[:1] = True
    np.not_equal(codes[1:], codes[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    if counts is None:
        return codes[first], np.diff(np.append(first, len(codes)))
    return codes[first], np.add.reduceat(counts, first) if len(first) else counts[:0]


def _merge_histograms(first, second):
    """The sum of two histograms: each the counts of every code (an array, used once), or the
    codes present (sorted) and their counts (a tuple)."""
    if not isinstance(first, tuple) or not isinstance(second, tuple):
        if isinstance(first, tuple):
            first, second = second, first
        if isinstance(second, tuple):
            first[second[0]] += second[1]  # a tuple's codes are distinct
        else:
            first += second
        return first
    codes = np.concatenate([first[0], second[0]])
    order = np.argsort(codes, kind="stable")  # two sorted runs: a merge
    return _runs(codes[order], np.concatenate([first[1], second[1]])[order])


def _dense_table(codes, labels, size):
    table = zeros(size, labels.dtype)
    table[codes] = labels
    return table


def _lookup_task(block, mask_block, offset, lut, alpha, coder):
    out = zeros(math.prod(block.shape[:-1]), dtype=lut.dtype)
    for span, codes, valid in _tile_codes(block, mask_block, alpha, coder):
        np.take(lut, codes, out=out[span])
        if valid is not None:
            out[span][~valid] = 0
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
        self._space: FeatureSpace | None = None
        self._sq: np.ndarray | None = None
        self._tiles: list[_tiles.ChunkTiles] | None = None

    @property
    def space(self) -> FeatureSpace | None:
        """How pixels become points; needed for the assignment passes. Setting it forgets
        what the passes learnt of the chunks (sums of squares, tile boxes)."""
        return self._space

    @space.setter
    def space(self, space: FeatureSpace) -> None:
        self._space = space
        self._sq = self._tiles = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.data.shape[:-1]

    def _offsets(self):
        return [offset for _, offset in _chunk_grid(self.data.chunks[:-1])]

    def _ids(self):
        return [idx for idx, _ in _chunk_grid(self.data.chunks[:-1])]

    def _blocks(self):
        """``(chunk, mask chunk, offset)`` for every chunk, as delayed objects."""
        data = self.data.to_delayed()
        mask = None if self.mask is None else self.mask.to_delayed()
        for idx, offset in zip(self._ids(), self._offsets(), strict=True):
            yield data[(*idx, 0)], None if mask is None else mask[idx], offset

    def _map(self, task, *args, per_chunk=None):
        """``task(chunk, mask chunk, offset, *args[, per_chunk[i]])`` over the chunks."""
        extra = [()] * len(self._ids()) if per_chunk is None else [(a,) for a in per_chunk]
        # tasks not named from their arguments: naming them took 8 ms a pass for 64 chunks
        calls = [
            dask.delayed(bind(task), pure=False)(b, m, o, *args, *more)
            for (b, m, o), more in zip(self._blocks(), extra, strict=True)
        ]
        return compute(*calls)

    # passes

    def _scan_calls(self):
        return [
            dask.delayed(bind(_scan_task), pure=True)(b, m, self.alpha)
            for b, m, _ in self._blocks()
        ]

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
        for (blk, mblk, offset), idx in zip(self._blocks(), self._ids(), strict=True):
            where = groups.get(int(np.ravel_multi_index(idx, grid)))
            if where is None:
                continue
            local = tuple(c[where] - o for c, o in zip(coords, offset, strict=True))
            calls.append(dask.delayed(bind(_sample_task), pure=True)(blk, mblk, local, self.alpha))
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
            keep = math.prod(self.spatial_shape) <= _tiles.CACHED_PIXELS
            parts = self._map(_stats_task, self.space, self.alpha, centers, None, keep)
            self._tiles = [p[2] for p in parts]
            self._sq = np.sum([t.squares for t in self._tiles], axis=0)
        else:
            parts = self._map(_stats_task, self.space, self.alpha, centers, per_chunk=self._tiles)
        return np.sum([p[0] for p in parts], axis=0), np.sum([p[1] for p in parts], axis=0)

    def labels_and_stats(self, centers: np.ndarray, dtype):
        """Labels as a numpy array, with per-cluster counts and raw sums, in one pass."""
        parts = self._map(
            _labels_stats_task, self.space, self.alpha, centers, dtype, per_chunk=self._tiles
        )
        labels = _assemble(self.spatial_shape, dtype, self._offsets(), [p[0] for p in parts])
        counts = np.sum([p[1] for p in parts], axis=0)
        return labels, counts, np.sum([p[2] for p in parts], axis=0)

    def sq_total(self, factor: np.ndarray) -> float:
        if self._sq is None:
            self.stats(np.zeros((1, len(factor))), factor)
        return float(self._sq @ (factor * factor))

    def farthest(self, centers: np.ndarray, factor: np.ndarray, m: int):
        parts = self._map(_farthest_task, self.space, self.alpha, centers, m)
        dist = np.concatenate([p[0] for p in parts])
        coords = np.concatenate([p[1] for p in parts])
        raw = np.concatenate([p[2] for p in parts])
        top = _top_by_position(dist, coords, m)
        return dist[top], raw[top]

    def histogram(self, coder: ColorCodes):
        """The colour codes present (sorted) and their counts: the chunks' histograms
        (:func:`_histogram_task`), summed two by two."""
        parts = [
            dask.delayed(bind(_histogram_task), pure=True)(b, m, self.alpha, coder)
            for b, m, _ in self._blocks()
        ]
        while len(parts) > 1:
            halves = zip(parts[::2], parts[1::2], strict=False)
            pairs = [dask.delayed(_merge_histograms, pure=True)(a, b) for a, b in halves]
            parts = pairs + parts[len(pairs) * 2 :]
        total = compute(parts[0])[0]
        if not isinstance(total, tuple):
            codes = np.flatnonzero(total)
            return codes, total[codes]
        return total[0].astype(np.int64), total[1].astype(np.int64)

    # lazy outputs

    def _lazy(self, task, dtype, *args, per_chunk=None):
        """Map ``task(chunk, mask chunk, offset, *args[, per_chunk[i]])`` lazily to a spatial
        array; ``per_chunk`` (delayed) holds one object per chunk, in C order."""
        watch = _watch.travelling()  # map_blocks needs run's own signature: no bind()

        def run(block, mask_block, *task_args, block_info=None):
            with _watch.watching(watch):
                checkpoint()
                return on_chunk(block, mask_block, *task_args, info=block_info[0])

        def on_chunk(block, mask_block, *task_args, info):
            location = info["array-location"][:-1]
            mask_block = None if mask_block is None else mask_block[..., 0]
            if per_chunk is not None:
                *task_args, objects = task_args
                index = np.ravel_multi_index(info["chunk-location"][:-1], info["num-chunks"][:-1])
                task_args.append(objects[index])
            return task(block, mask_block, tuple(lo for lo, _ in location), *task_args)

        mask = None if self.mask is None else self.mask[..., None]
        return da.map_blocks(
            run,
            self.data,
            mask,
            *args,
            *(() if per_chunk is None else (per_chunk,)),
            drop_axis=self.data.ndim - 1,
            dtype=dtype,
            meta=np.empty((0,) * (self.data.ndim - 1), dtype=dtype),
        )

    def labels(self, centers: np.ndarray, dtype) -> da.Array:
        """Lazy labels, 1 + the index of the nearest centre, 0 where pixels are not clustered.

        After a pass, each chunk's task starts from the chunk's :class:`_tiles.ChunkTiles`
        (held by the graph as one object for all its tasks) instead of finding them again.
        """
        args = (_labels_task, dtype, self.space, self.alpha, centers, dtype)
        if self._tiles is None:
            return self._lazy(*args)
        known = np.empty(len(self._tiles), dtype=object)
        known[:] = self._tiles
        return self._lazy(*args, per_chunk=dask.delayed(known, pure=False))

    def lookup_labels(self, codes, labels, coder: ColorCodes) -> da.Array:
        """Lazy labels through a colour lookup table.

        The graph holds the codes present and their labels; one task expands them into the
        dense table (``size`` entries) that every chunk reads, so the graph stays small under
        any scheduler.
        """
        # not named from its arguments: hashing the 1 M codes of a photo took 8 ms
        table = dask.delayed(_dense_table, pure=False)(codes, labels, coder.size)
        return self._lazy(_lookup_task, labels.dtype, table, self.alpha, coder)


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
        for idx, offset in _chunk_grid(labels.chunks)
    ]
    parts = compute(*calls)
    counts = np.sum([p[0] for p in parts], axis=0)[1:]
    sums = np.sum([p[1] for p in parts], axis=0)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]
