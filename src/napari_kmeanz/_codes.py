"""The colour-only path: integer colours as codes, their histogram, and labels by table.

With ``spatial_weight=0`` and an integer image of at most ``MAX_HISTOGRAM`` possible colours,
a run clusters the distinct colours weighted by their counts (the same objective, exactly),
and labels pixels through a table from colour code to label. Codes are indices into the box
of possible colours; Z-order keys sort the distinct colours so that close colours sit
together, in the nested cells of ``_prune.PointCells``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._compute import zeros
from ._features import Chunk
from ._watch import checkpoint

# Most possible colours (codes) for the colour-only fast path: its labels come through a table
# with an entry for each.
MAX_HISTOGRAM = 1 << 24
# Up to this many possible colours (and no more than 4 per pixel of a chunk), a chunk's colours
# are counted into a table (np.add.at), not sorted: for a chunk of 4 M pixels of 16-bit grey,
# 4 ms against 20 ms.
DENSE_HISTOGRAM = 1 << 20
# Pixels per tile when colour codes are computed.
CODE_TILE = 1 << 16
# A chunk's codes are sorted and counted this many pixels at a time (8 MiB of int32), each
# slab's counts merged into the chunk's. Measured on a 4096x6144 photo (two chunks, k=16, 10
# rounds; tracemalloc): the codes of whole chunks sorted at once (4 bytes a pixel, and a byte
# of run starts) and the chunks' histograms merged by a sort of the two held 157 MiB at the
# peak, 0.77 s; merged by lookup 136 MiB; in slabs of 2^22 91 MiB, 0.84 s; of 2^20 68 MiB,
# 0.89 s. Measured again once the run's other peaks were lower (the histogram alone, four
# runs each, under tracemalloc): 2^22 95-99 MiB, 0.73-0.79 s; 2^21 56-67 MiB, 0.73-0.84 s;
# 2^20 50-58 MiB, 0.77-0.88 s.
HISTOGRAM_SLAB = 1 << 21
# Bits per channel left out of the Z-order keys for the three levels of cells of distinct
# colours: cubes of side 16, 8 and 4 in colour space (see PointCells).
CELL_BITS = (4, 3, 2)


@dataclass(frozen=True, eq=False)
class ColorCodes:
    """Integer colours as codes ``0 .. size - 1``, the indices of a dense colour histogram.

    A colour's code is its index in the box of all colours between the per-channel minima and
    maxima, the first channel varying fastest: ``sum((v_c - vmin_c) * stride_c)``. For 8-bit
    RGB over the whole range, that is the pixel's three bytes read as one little-endian
    integer, and pixels are encoded that way, without arithmetic per channel.

    The order of codes runs along the first channel; :meth:`z_ordered` sorts codes by keys
    whose order runs through compact cubes of colour space (a Z-order or Morton code, the
    channels' bits interleaved), which is what lets the kernels leave far centres out of a
    block of colours.

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
        """Distinct ``codes`` sorted by the Z-order keys of their colours: the bits of each
        channel's ``v - vmin`` interleaved from the lowest, so that the colours sharing
        ``key >> (b * C)`` lie in a cube of side ``2**b``.

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


def _tile_codes(chunk: Chunk, coder: ColorCodes):
    """Colour codes of a chunk's pixels, a tile of pixels at a time.

    Yields ``(span, codes, valid)``: the slice of the chunk's pixels (in C order) the tile
    covers, their codes (intp, as indices need them: a buffer reused from tile to tile) and
    which of them are clustered (None: all of them). Working in tiles keeps every temporary
    small.
    """
    tile = CODE_TILE
    values, valid = chunk.values()
    buffer = np.empty(tile, dtype=np.intp)
    scratch = np.empty(min(tile, len(values)), dtype=np.int64)
    for start in range(0, len(values), tile):
        checkpoint()
        part = values[start : start + tile]
        span = slice(start, start + len(part))
        codes = coder.encode(part, buffer[: len(part)], scratch[: len(part)])
        yield span, codes, None if valid is None else valid[span]


def histogram_task(chunk: Chunk, coder: ColorCodes):
    """A chunk's colour histogram: its distinct codes (sorted) and their counts, or for few
    possible codes the counts of every code.

    The chunk's codes are sorted and counted run by run, HISTOGRAM_SLAB pixels at a time.
    Measured on the 4096x4096 photo in two chunks: 58 ms on two threads, against 144 ms for
    counting into a table of every code with ``np.add.at`` (two 64 MiB tables, which gained
    nothing from the second thread; and they needed a merge and a search for the codes
    present). Where there are few possible codes (up to ``DENSE_HISTOGRAM``, as for 16-bit
    grey), they are counted into a table.
    """
    n = math.prod(chunk.shape)
    if coder.size <= min(DENSE_HISTOGRAM, 4 * n):  # a small table, in cache
        counts, one = np.zeros(coder.size, dtype=np.int64), np.ones(1, dtype=np.int64)
        for _, codes, clustered in _tile_codes(chunk, coder):
            np.add.at(counts, codes if clustered is None else codes[clustered], one)
        return counts
    slab = np.empty(max(CODE_TILE, min(n, HISTOGRAM_SLAB)), dtype=np.int32)  # < MAX_HISTOGRAM
    found, filled = None, 0
    for _, codes, clustered in _tile_codes(chunk, coder):
        if clustered is not None:
            codes = codes[clustered]
        if filled + len(codes) > len(slab):
            found, filled = _slab_counted(found, slab[:filled]), 0
        slab[filled : filled + len(codes)] = codes
        filled += len(codes)
    return _slab_counted(found, slab[:filled])


def _slab_counted(found, codes: np.ndarray):
    """The histogram ``found`` (None: empty) with the codes of a slab added (sorted in
    place)."""
    codes.sort()
    slab = _runs(codes)
    return slab if found is None else _merged(found, slab)


def _merged(found, other):
    """The sum of two histograms of distinct codes (sorted) and their counts, ``found``'s
    counts added to in place: ``other``'s codes are looked up in ``found``'s and the new
    ones inserted, a linear pass (a sort of the two together held 40 bytes a code)."""
    seen, counts = found
    codes, more = other
    at = np.searchsorted(seen, codes)
    known = at < len(seen)
    known[known] = seen[at[known]] == codes[known]
    counts[at[known]] += more[known]  # (distinct codes: no two adds to one entry)
    new = ~known
    if not new.any():
        return seen, counts
    return np.insert(seen, at[new], codes[new]), np.insert(counts, at[new], more[new])


def _runs(codes: np.ndarray):
    """The distinct values of sorted ``codes`` and how many times each appears."""
    starts = np.empty(len(codes), dtype=bool)  # where a run of equal codes starts
    starts[:1] = True
    np.not_equal(codes[1:], codes[:-1], out=starts[1:])
    first = np.flatnonzero(starts)
    return codes[first], np.diff(np.append(first, len(codes)))


def merge_histograms(first, second):
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
    if len(first[0]) < len(second[0]):  # the smaller looked up in the larger
        first, second = second, first
    return _merged(first, second)


def dense_table(codes, labels, size):
    table = zeros(size, labels.dtype)
    table[codes] = labels
    return table


def lookup_task(chunk: Chunk, lut: np.ndarray, coder: ColorCodes, into=None) -> np.ndarray:
    """Labels of a chunk's pixels through the table ``lut`` from colour code to label;
    written into the chunk's place in ``into`` (the whole image's labels) when given and
    that place is one block of memory, as it is for a numpy image's bands of rows."""
    if into is not None:
        place = chunk.place(into)
        if place.flags.c_contiguous:
            _looked_up(chunk, lut, coder, place.reshape(-1))
            return None
        place[...] = lookup_task(chunk, lut, coder)
        return None
    out = zeros(math.prod(chunk.shape), dtype=lut.dtype)
    return _looked_up(chunk, lut, coder, out).reshape(chunk.shape)


def _looked_up(chunk: Chunk, lut: np.ndarray, coder: ColorCodes, out: np.ndarray):
    for span, codes, valid in _tile_codes(chunk, coder):
        np.take(lut, codes, out=out[span])
        if valid is not None:
            out[span][~valid] = 0
    return out


def distinct_colors(histogram, coder: ColorCodes, n_channels: int):
    """The distinct colours of a histogram (codes present, counts), sorted in Z-order.

    Returns ``(rows, counts, codes, keys)``: the colours decoded straight into the raw rows
    the passes read (a ones column after them, column-major), their counts (float64), their
    codes and Z-order keys. Cells of ``keys >> shift`` for the shifts
    :func:`cell_shifts` gives are cubes of colour space.
    """
    codes, counts = histogram
    del histogram  # each array let go of as soon as it is replaced
    codes, keys, order = coder.z_ordered(codes)
    counts = counts[order].astype(np.float64)
    del order
    # kept for the whole run: as int32 where they fit (codes always do, < MAX_HISTOGRAM),
    # 8 bytes a colour less (14 MiB for the 1.7 M colours of a 4096x6144 photo), and made
    # before the rows, so that the int64 ones are gone by then
    codes = codes.astype(np.int32)
    if not len(keys) or int(keys[-1]) < 1 << 31:
        keys = keys.astype(np.int32)
    return decoded_rows(codes, coder, n_channels), counts, codes, keys


def decoded_rows(codes: np.ndarray, coder: ColorCodes, n_channels: int) -> np.ndarray:
    """The colours of ``codes`` as the raw rows the passes read: (n, C + 1) float64, a ones
    column after the channels, column-major."""
    columns = zeros((n_channels + 1, len(codes)))
    coder.decode(codes, out=columns[:-1])
    columns[-1] = 1.0
    return columns.T


def cell_shifts(n_channels: int) -> tuple[int, ...]:
    """Shifts of Z-order keys whose cells are the cubes of side 16, 8 and 4 (``CELL_BITS``)."""
    return tuple(bits * n_channels for bits in CELL_BITS)
