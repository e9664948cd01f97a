"""The raw rows of a chunk's pixels, tile by tile: what every pass over the pixels reads.

A batch of tiles (``_grid``) becomes one ``(T, d + 1, pixels)`` array: each tile's pixels'
raw features (positions, then values), feature by feature, then a ones row, and zero for the
pixels not clustered (:class:`TileRows`). The channel values are read from the chunk's own
memory by a compiled kernel (:func:`_gathered`), whatever its dtype and strides: no copy of
the tiles' pixels, no cast of a transposed array, and no interpreter's lock, so that dask's
threads build their chunks' rows side by side. The filters' columns (``_filters``) are
already laid out tile by tile and are copied as they are.
"""

from __future__ import annotations

import numpy as np

from ._features import Chunk, FeatureSpace, column_dtype
from ._grid import TileGrid
from ._jit import helper, kernel
from ._watch import checkpoint

# Pixels whose rows are built at a time when a chunk is read whole (its tiles' boxes, the
# farthest pixels): 1 MiB of rows for 5 features.
BATCH_PIXELS = 1 << 15
# dtypes the kernel cannot read, read as the dtype that holds their values (exactly for
# float16; longdouble as float64, which the rows are).
_READ_AS = {"e": np.float32, "g": np.float64}


def flat_view(array: np.ndarray):
    """A read-only 1-D view of the memory ``array`` spans, from its lowest address; where its
    first element is in it, and its strides in elements (any signs). An array whose strides
    are not whole elements (a field of a packed record) is copied first."""
    if array.dtype.char in _READ_AS:
        array = array.astype(_READ_AS[array.dtype.char])
    if any(s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    steps = np.array([s // array.itemsize for s in array.strides], dtype=np.intp)
    if array.size == 0:
        return _read_only(np.zeros(1, array.dtype)), 0, steps
    base = int(sum((n - 1) * -s for n, s in zip(array.shape, steps, strict=True) if s < 0))
    lowest = array[tuple(slice(None, None, -1) if s < 0 else slice(None) for s in steps)]
    extent = 1 + int(sum((n - 1) * abs(s) for n, s in zip(array.shape, steps, strict=True)))
    flat = np.lib.stride_tricks.as_strided(lowest, (extent,), (array.itemsize,), writeable=False)
    return flat, base, steps


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@kernel()  # compiled for each image dtype it meets (and kept in numba's cache)
def _gathered(
    flat,
    origin,
    base,
    strides,
    mask,
    mask_base,
    mask_strides,
    n_channels,
    alpha,
    shape,
    offset,
    n_spatial,
    coords,
    sides,
    local,
    tiles,
    rows,
    valid,
):  # pragma: no cover (compiled: ``_jit``)
    """Write the rows of the ``tiles`` (numbers in the chunk's grid: ``coords``, ``sides`` and
    ``local`` as in ``TileGrid``) to ``rows`` (T, d + 1, pixels) and which of their pixels are
    clustered to ``valid`` (T, pixels); return how many are not.

    A pixel at ``c`` (per axis, in the chunk of ``shape``) has its first channel at ``base +
    sum(c * strides)`` of ``flat`` and the next ones ``strides[-1]`` apart (alpha after the
    ``n_channels`` values); ``mask`` (empty: none) likewise, from ``mask_base``. Its row is
    ``offset + c`` along the ``n_spatial`` first axes, its values less ``origin[0]`` (in the
    image's own dtype: exact for integers), then 1. A pixel past the chunk, masked out,
    transparent, or with a value not finite has a row of zeros.
    """
    n_tiles, width, n = rows.shape
    nd = len(shape)
    step = strides[nd]
    floats = flat.dtype.kind == "f"  # (only floats hold values that are not finite)
    start = np.zeros(nd, dtype=np.intp)  # a tile's first pixel, per axis
    near = np.zeros((2, n), dtype=np.intp)  # each pixel's place from its tile's first one
    _places(start, shape, strides, mask_strides, local, near, np.ones(n, dtype=np.bool_))
    far = np.empty((2, n), dtype=np.intp)  # a far tile's, from the chunk's first one
    hidden = 0
    for t in range(n_tiles):
        at, mask_at, whole = base, mask_base, True
        for a in range(nd):
            start[a] = coords[a, tiles[t]] * sides[a]
            at += start[a] * strides[a]
            mask_at += start[a] * mask_strides[a]
            whole &= start[a] + sides[a] <= shape[a]
            if a < n_spatial:
                for p in range(n):
                    rows[t, a, p] = offset[a] + start[a] + local[a, p]
        valid[t, :] = True
        rows[t, width - 1, :] = 1.0
        places = near
        if not whole:  # its pixels past the chunk hidden, read as the chunk's last ones
            _places(start, shape, strides, mask_strides, local, far, valid[t])
            at, mask_at, places = base, mask_base, far
        for channel in range(n_channels):
            row = rows[t, n_spatial + channel]
            for p in range(n):
                row[p] = flat[at + places[0, p] + channel * step] - origin[0]
            if floats:
                for p in range(n):
                    valid[t, p] &= row[p] - row[p] == 0.0  # (not inf or NaN)
        for p in range(n if alpha else 0):
            valid[t, p] &= flat[at + places[0, p] + n_channels * step] > 0
        for p in range(n if len(mask) else 0):
            valid[t, p] &= mask[mask_at + places[1, p]]
        if not whole or floats or alpha or len(mask):  # (else every pixel is clustered)
            for p in range(n):
                if not valid[t, p]:
                    hidden += 1
                    rows[t, :, p] = 0.0
    return hidden


@helper
def _places(start, shape, strides, mask_strides, local, places, valid):  # pragma: no cover
    """Each pixel's place in the image's memory and in the mask's (``places`` (2, pixels)),
    from the chunk's first pixel, of the tile whose first pixel is at ``start``: a pixel
    past the chunk is read as the chunk's last one along that axis, and is not ``valid``."""
    for p in range(local.shape[1]):
        places[0, p] = places[1, p] = 0
        for a in range(len(shape)):
            c = start[a] + local[a, p]
            valid[p] &= c < shape[a]
            c = min(c, shape[a] - 1)
            places[0, p] += c * strides[a]
            places[1, p] += c * mask_strides[a]


class TileRows:
    """Builds the rows of a batch of tiles: ``(T, d + 1, pixels)``, the raw features then a
    ones row, zero for the pixels not clustered. One buffer, reused from batch to batch.

    Positions are the pixels' coordinates in the image (the chunk's ``offset`` added), as in
    every other pass: a pixel's distances are then computed from the same numbers whatever
    the chunking, and so are the rare pixels equally near two centres up to rounding.

    Rows that float32 holds exactly (:meth:`exact_in_float32`) are built as float32: half
    the bytes to write and to read, the same numbers, and one compiled gather per image dtype.
    """

    def __init__(self, grid: TileGrid, chunk: Chunk, space: FeatureSpace, size: int):
        self.grid, self.chunk, self.space = grid, chunk, space
        dtype = np.float32 if self.exact_in_float32() else np.float64
        self.buffer = np.empty((size, space.n_features + 1, grid.pixels), dtype=dtype)
        self.valid = np.empty((size, grid.pixels), dtype=bool)
        nd = len(grid.shape)
        self.tiling = (np.array(grid.shape, np.intp), np.array(chunk.offset[:nd], np.intp),
                       space.n_spatial, grid.coords, np.array(grid.sides, np.intp),
                       grid.local)  # fmt: skip
        self.source = self._source() if chunk.filters is None else self._no_values()

    def _source(self):
        """The kernel's arguments that say where the chunk's values (and mask) lie."""
        chunk, space = self.chunk, self.space
        flat, base, strides = flat_view(chunk.block)
        origin = space.origin if space.color_space == "rgb" else 0
        origin = _read_only(np.array([origin], dtype=flat.dtype))
        if chunk.mask is None:
            mask = (_read_only(np.zeros(0, bool)), 0, np.zeros(len(self.grid.shape), np.intp))
        else:
            mask = flat_view(chunk.mask.astype(bool, copy=False))
        return (flat, origin, base, strides, *mask, space.n_channels, chunk.alpha)

    def _no_values(self):
        """The kernel's arguments for positions alone: the filters' columns are copied."""
        nothing = _read_only(np.zeros(1))
        strides = np.zeros(len(self.grid.shape) + 1, np.intp)
        return (nothing, nothing, 0, strides, _read_only(np.zeros(0, bool)), 0, strides, 0, False)

    @classmethod
    def batches(cls, grid: TileGrid, chunk: Chunk, space: FeatureSpace) -> TileRows:
        """A builder for batches of about ``BATCH_PIXELS`` pixels."""
        return cls(grid, chunk, space, max(1, BATCH_PIXELS // grid.pixels))

    def exact_in_float32(self) -> bool:
        """Whether float32 holds every number of the chunk's rows: coordinates below 2^24 and,
        with no origin to subtract, values of up to 16-bit integers or float16 as they are,
        or filtered columns kept as float32 (:func:`column_dtype`)."""
        chunk, space = self.chunk, self.space
        if column_dtype(chunk.block.dtype) != np.float32 or space.origin:
            return False
        if chunk.filters is None and not space.raw_values:  # (CIE Lab: computed values)
            return False
        far = max((o + n for o, n in zip(chunk.offset, chunk.shape, strict=False)), default=0)
        return far < 1 << 24

    @property
    def size(self) -> int:
        """Tiles per batch, at most."""
        return self.buffer.shape[0]

    def build(self, tiles: np.ndarray):
        """Rows of the tiles, and which pixels are clustered (None: all of them)."""
        checkpoint()  # every loop over a chunk's tiles builds its rows here
        t = len(tiles)
        rows, valid = self.buffer[:t], self.valid[:t]
        tiles = np.asarray(tiles, dtype=np.intp)
        hidden = _gathered(*self.source, *self.tiling, tiles, rows, valid)
        space = self.space
        if self.chunk.filters is not None:  # laid out as the rows are: one copy
            target = rows[:, space.n_spatial : -1]
            clustered = self.chunk.tile_columns(tiles, target)
            if space.origin:
                target[:, space.shifted] -= space.origin
            if clustered is not None:
                valid &= clustered
                hidden = not valid.all()
        elif space.color_space == "lab":  # (computed from the raw values: float64 rows)
            target = rows[:, space.n_spatial : -1]
            values = target.transpose(0, 2, 1).reshape(-1, target.shape[1])
            target[...] = space.values(values).reshape(t, -1, target.shape[1]).transpose(0, 2, 1)
        else:  # (the kernel's rows as they are: zero where not clustered)
            return rows, valid if hidden else None
        if not hidden:
            return rows, None
        # the pixels not clustered: all zero again (set, not multiplied: an infinite or NaN
        # value times 0 is NaN, with a warning)
        np.copyto(rows, 0.0, where=~valid[:, None, :])
        return rows, valid


def chunk_rows(chunk: Chunk, space: FeatureSpace):
    """The raw rows of a chunk's clustered pixels with a ones column, (n, d + 1), a batch of
    tiles at a time, each with the pixels' coordinates in the chunk, (n, ndim)."""
    grid = TileGrid.for_shape(chunk.shape)
    builder = TileRows.batches(grid, chunk, space)
    per_batch = builder.size
    for start in range(0, grid.n_tiles, per_batch):
        tiles = np.arange(start, min(start + per_batch, grid.n_tiles))
        batch, valid = builder.build(tiles)
        # (one copy: pixel by pixel, as float64)
        rows = batch.transpose(0, 2, 1).astype(np.float64, order="C").reshape(-1, batch.shape[1])
        coords = np.stack([c.ravel() for c in grid.pixel_coords(tiles)[0]], axis=1)
        if valid is not None:  # (the pixels outside the chunk are not valid either)
            rows, coords = rows[valid.ravel()], coords[valid.ravel()]
        if len(rows):
            yield rows, coords
