"""A chunk's pixels as nested tiles, for the assignment passes.

A chunk is cut into *tiles* of about ``TILE_PIXELS`` pixels (16x16 in 2-D), grouped into
*blocks* of about ``BLOCK_PIXELS`` (64x64). The first pass over a chunk records each tile's box
(per-feature minimum and maximum of its clustered pixels) and raw sums (:class:`ChunkTiles`);
the pixels do not change during a run, so neither do these. A pass then tests the blocks
against the centres, the tiles only inside blocks left open (:func:`_lloyd.split_cells`): a
block or tile that only one centre can be nearest to goes whole to it, from its sums, without
its pixels being read. Measured on a 4096x4096 photo with k=16 and position features: a quarter
of the pixels were left to read, with 4 candidate centres each on average, where the sub-blocks
of 32768 pixels used before left four fifths, with 11.

The pixels of the open tiles are read in batches, each tile's pixels as one block of a
``(tiles, d + 1, pixels)`` array whose rows are the raw features and a ones row; tiles with the
same number of candidate centres (padded, see ``_BUCKETS``) are batched together, and each
tile's distances to its own candidates are one small product. A tile's per-candidate sums are
the product of the one-hot assignment with its rows: for integer images every term is an
integer, and the float64 sums are exact and independent of the chunking.
"""

from __future__ import annotations

import functools
import math
import uuid
from dataclasses import dataclass, field

import numpy as np

from . import _lloyd
from ._lloyd import zeros
from ._watch import checkpoint

# Pixels per tile and per block (powers of two; tiles are compact, and a block is whole tiles).
TILE_PIXELS = 1 << 8
BLOCK_PIXELS = 1 << 12
# Pixels read per batch when the boxes are first recorded.
BATCH_PIXELS = 1 << 15
# Distances computed per batch of open tiles (tiles x candidates x pixels): 1 MiB of float64.
BATCH_DISTANCES = 1 << 17
# Largest image (in pixels) whose runs keep every tile's box between passes: with position
# features, about half a byte per pixel (a box and sums per 256 pixels). Beyond, they keep the
# blocks' (1/16 of that), and each pass finds again the tiles of the blocks it leaves open.
CACHED_PIXELS = 1 << 28
# A padded candidate list holds one of these many candidates (or k); padding is a centre that
# no pixel is near to.
_BUCKETS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


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


def _power_sides(shape, size: int) -> tuple[int, ...]:
    """Power-of-two sides of a compact tile of at most ``size`` pixels for ``shape``: each side
    starts at the power of two covering the axis, and the longest one is halved until the
    tile is small enough."""
    sides = [1 << max(0, int(n - 1).bit_length()) for n in shape]
    while math.prod(sides) > size:
        longest = int(np.argmax(sides))
        sides[longest] //= 2
    return tuple(sides)


@dataclass(frozen=True, eq=False)
class TileGrid:
    """The tiles of a chunk's spatial shape, numbered block after block.

    Tile ``i`` is tile ``i % per_block`` (C order) of block ``i // per_block`` (C order); its
    first pixel is at ``coords[:, i] * sides``. Tiles at the far edges may reach past the
    chunk (``inside`` is False for them).
    """

    shape: tuple[int, ...]
    sides: tuple[int, ...]  # of a tile
    coords: np.ndarray  # (ndim, n_tiles): each tile's place in the grid of tiles
    inside: np.ndarray  # (n_tiles,) bool: whether the tile lies in the chunk whole
    local: np.ndarray  # (ndim, pixels): the offsets of a tile's pixels, in C order
    per_block: int

    @classmethod
    @functools.lru_cache(maxsize=64)
    def for_shape(cls, shape: tuple[int, ...]) -> TileGrid:
        block = _power_sides(shape, BLOCK_PIXELS)
        sides = _power_sides(block, TILE_PIXELS)
        ratio = [b // s for b, s in zip(block, sides, strict=True)]
        n_blocks = [-(-n // b) for n, b in zip(shape, block, strict=True)]
        block_of = np.indices(n_blocks).reshape(len(shape), -1)
        within = np.indices(ratio).reshape(len(shape), -1)
        ratio_column = np.array(ratio)[:, None, None]
        coords = (block_of[:, :, None] * ratio_column + within[:, None, :]).reshape(len(shape), -1)
        ends = (coords + 1) * np.array(sides)[:, None]
        inside = np.all(ends <= np.array(shape)[:, None], axis=0)
        local = np.indices(sides).reshape(len(shape), -1)
        return cls(tuple(shape), sides, coords, inside, local, math.prod(ratio))

    @property
    def pixels(self) -> int:
        """Pixels per tile."""
        return math.prod(self.sides)

    @property
    def n_tiles(self) -> int:
        return self.coords.shape[1]

    def origins(self, tiles: np.ndarray) -> np.ndarray:
        """The first pixel of each tile, (len(tiles), ndim)."""
        return (self.coords[:, tiles] * np.array(self.sides)[:, None]).T

    def _interior(self, array: np.ndarray) -> np.ndarray:
        """A view of ``array`` (spatial shape, then any trailing axes) as (*tile grid, *sides,
        *trailing) over its whole tiles."""
        nd = len(self.shape)
        counts = [n // s for n, s in zip(self.shape, self.sides, strict=True)]
        region = array[tuple(slice(0, c * s) for c, s in zip(counts, self.sides, strict=True))]
        split = [n for pair in zip(counts, self.sides, strict=True) for n in pair]
        view = region.reshape(*split, *array.shape[nd:])
        order = [*range(0, 2 * nd, 2), *range(1, 2 * nd, 2), *range(2 * nd, view.ndim)]
        return view.transpose(order)

    def _pixel_coords(self, tiles: np.ndarray):
        """Per axis, the coordinates (clipped to the chunk) of the tiles' pixels, (T, pixels),
        and which pixels lie in the chunk."""
        origins = self.origins(tiles)
        coords, in_chunk = [], np.ones((len(tiles), self.pixels), dtype=bool)
        for axis, n in enumerate(self.shape):
            along = origins[:, axis, None] + self.local[axis]
            in_chunk &= along < n
            coords.append(np.minimum(along, n - 1))
        return tuple(coords), in_chunk

    def gather(self, array: np.ndarray, tiles: np.ndarray):
        """The tiles' pixels of ``array``: (T, pixels, *trailing), and which of them lie in the
        chunk (None: all of them)."""
        if self.inside[tiles].all():
            picked = self._interior(array)[tuple(self.coords[:, tiles])]
            return picked.reshape(len(tiles), self.pixels, *array.shape[len(self.shape) :]), None
        coords, in_chunk = self._pixel_coords(tiles)
        return array[coords], in_chunk

    def paint(self, out: np.ndarray, tiles: np.ndarray, values: np.ndarray, where=None) -> None:
        """Write ``values`` (per pixel, (T, pixels)) to the tiles' pixels of ``out``, only
        where ``where`` (T, pixels) is true when given."""
        if where is None and self.inside[tiles].all():
            shaped = values.reshape(len(tiles), *self.sides)
            self._interior(out)[tuple(self.coords[:, tiles])] = shaped
            return
        coords, in_chunk = self._pixel_coords(tiles)
        if where is not None:
            in_chunk &= where
        out[tuple(c[in_chunk] for c in coords)] = values[in_chunk]

    def paint_tiles(self, out: np.ndarray, values: np.ndarray) -> None:
        """Write one value per tile (every tile, (n_tiles,)) to all its pixels of ``out``."""
        inside = self.inside
        counts = [n // s for n, s in zip(self.shape, self.sides, strict=True)]
        per_tile = np.zeros(counts, dtype=out.dtype)
        per_tile[tuple(self.coords[:, inside])] = values[inside]
        self._interior(out)[...] = per_tile.reshape(*counts, *((1,) * len(self.shape)))
        edge = np.flatnonzero(~inside)
        if len(edge):
            per_pixel = np.broadcast_to(values[edge, None], (len(edge), self.pixels))
            self.paint(out, edge, per_pixel, np.ones(per_pixel.shape, dtype=bool))


@dataclass(frozen=True, eq=False)
class ChunkTiles:
    """What the passes need to know of a chunk's tiles, found once in the first pass.

    ``blocks`` and ``tiles`` are the blocks and tiles holding clustered pixels (numbers in
    the chunk's :class:`TileGrid`: a block ``b`` holds tiles ``b * per_block`` onwards);
    ``levels`` their boxes and sums as :func:`_lloyd.split_cells` takes them (lows, highs,
    totals, parents), blocks then tiles; ``squares`` the per-feature sums of squares of the
    raw rows. Kept for blocks only (``tiles`` None), the tiles inside the blocks a pass leaves
    open are found again in that pass (see ``CACHED_PIXELS``).
    """

    blocks: np.ndarray
    tiles: np.ndarray | None
    levels: tuple
    squares: np.ndarray
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __dask_tokenize__(self):
        """A name of its own: dask would otherwise hash every array for each pass's task
        names (measured: 26 ms a pass for the 64 chunks of an 8192x8192 photo)."""
        return self.token


class _Rows:
    """Builds the rows of a batch of tiles: ``(T, d + 1, pixels)`` float64, the raw features
    then a ones row, zero for the pixels not clustered. One buffer, reused from batch to batch.

    Positions are the pixels' coordinates in the image (the chunk's ``offset`` added), as in
    every other pass: a pixel's distances are then computed from the same numbers whatever
    the chunking, and so are the rare pixels equally near two centres up to rounding.
    """

    def __init__(self, grid: TileGrid, block, mask_block, offset, space, alpha, size: int):
        self.grid, self.block, self.mask = grid, block, mask_block
        self.space, self.alpha = space, alpha
        self.nsp = space.n_spatial
        self.offset = np.array(offset[: self.nsp], dtype=np.intp)
        self.buffer = np.empty((size, space.n_features + 1, grid.pixels))
        self.buffer[:, -1] = 1.0
        self.dirty = False

    def build(self, tiles: np.ndarray):
        """Rows of the tiles, and which pixels are clustered (None: all of them)."""
        checkpoint()  # every loop over a chunk's tiles builds its rows here
        t, p = len(tiles), self.grid.pixels
        if self.dirty:
            self.buffer[:, -1] = 1.0
            self.dirty = False
        rows = self.buffer[:t]
        starts = self.grid.origins(tiles)[:, : self.nsp] + self.offset
        for axis in range(self.nsp):
            np.add(starts[:, axis, None], self.grid.local[axis], out=rows[:, axis])
        picked, valid = self.grid.gather(self.block, tiles)
        mask = None if self.mask is None else self.grid.gather(self.mask, tiles)[0]
        values, clustered = chunk_values(
            picked.reshape(t * p, -1), None if mask is None else mask.reshape(-1), self.alpha
        )
        if clustered is not None:
            clustered = clustered.reshape(t, p)
            valid = clustered if valid is None else valid & clustered
        target = rows[:, self.nsp : -1]
        if self.space.raw_values:
            target[...] = values.reshape(t, p, -1).transpose(0, 2, 1)
        else:
            target[...] = self.space.values(values).reshape(t, p, -1).transpose(0, 2, 1)
        if valid is not None:
            rows *= valid[:, None, :]  # the pixels not clustered: all zero
            if values.dtype.kind == "f":  # NaN times 0 is NaN
                np.copyto(target, 0.0, where=~valid[:, None, :])
            self.dirty = True
        return rows, valid


def _tile_boxes(builder: _Rows, tiles: np.ndarray, d: int):
    """Box, raw sums and count of each of the tiles, and the per-feature sums of squares of
    their clustered pixels' raw rows."""
    per_batch = builder.buffer.shape[0]
    lows, highs = np.empty((len(tiles), d)), np.empty((len(tiles), d))
    totals, squares = np.empty((len(tiles), d + 1)), np.zeros(d)
    for start in range(0, len(tiles), per_batch):
        batch = slice(start, start + per_batch)
        rows, valid = builder.build(tiles[batch])
        raw = rows[:, :-1]
        if valid is None:
            lows[batch], highs[batch] = raw.min(axis=2), raw.max(axis=2)
        else:
            hidden = ~valid[:, None, :]
            lows[batch] = np.where(hidden, np.inf, raw).min(axis=2)
            highs[batch] = np.where(hidden, -np.inf, raw).max(axis=2)
        totals[batch] = rows.sum(axis=2)
        squares += np.einsum("tfp,tfp->f", raw, raw)
    return lows, highs, totals, squares


def _box_builder(grid, block, mask_block, offset, space, alpha) -> _Rows:
    per_batch = max(1, BATCH_PIXELS // grid.pixels)
    return _Rows(grid, block, mask_block, offset, space, alpha, per_batch)


def pixel_rows(block, mask_block, offset, space, alpha: bool):
    """The raw rows of a chunk's clustered pixels with a ones column, (n, d + 1), a batch of
    tiles at a time, each with the pixels' coordinates in the chunk, (n, ndim)."""
    grid = TileGrid.for_shape(block.shape[:-1])
    builder = _box_builder(grid, block, mask_block, offset, space, alpha)
    per_batch = builder.buffer.shape[0]
    for start in range(0, grid.n_tiles, per_batch):
        tiles = np.arange(start, min(start + per_batch, grid.n_tiles))
        rows, valid = builder.build(tiles)
        rows1 = rows.transpose(0, 2, 1).reshape(-1, rows.shape[1])
        coords = np.stack([c.ravel() for c in grid._pixel_coords(tiles)[0]], axis=1)
        if valid is not None:  # (the pixels outside the chunk are not valid either)
            rows1, coords = rows1[valid.ravel()], coords[valid.ravel()]
        if len(rows1):
            yield rows1, coords


def record(block, mask_block, offset, space, alpha: bool, keep_tiles: bool = True) -> ChunkTiles:
    """A chunk's :class:`ChunkTiles`: each tile's box, raw sums and count, and its blocks'
    (``offset``: the chunk's first pixel in the image); the tiles' are kept with
    ``keep_tiles``."""
    grid = TileGrid.for_shape(block.shape[:-1])
    builder = _box_builder(grid, block, mask_block, offset, space, alpha)
    every = np.arange(grid.n_tiles)
    lows, highs, totals, squares = _tile_boxes(builder, every, space.n_features)
    filled = np.flatnonzero(totals[:, -1] > 0)
    lows, highs, totals = lows[filled], highs[filled], totals[filled]
    new_block = np.diff(filled // grid.per_block, prepend=-1) != 0  # the first tile of a block
    first = np.flatnonzero(new_block)
    parents = np.cumsum(new_block) - 1
    blocks = filled[first] // grid.per_block
    if not len(filled):  # nothing clustered in the chunk
        block_level = (lows, highs, totals)
    else:
        block_level = (
            np.minimum.reduceat(lows, first),
            np.maximum.reduceat(highs, first),
            np.add.reduceat(totals, first),
        )
    if not keep_tiles:
        return ChunkTiles(blocks, None, (*((a,) for a in block_level), ()), squares)
    tile_level = (lows, highs, totals)
    levels = (*((a, b) for a, b in zip(block_level, tile_level, strict=True)), (parents,))
    return ChunkTiles(blocks, filled, levels, squares)


def _open_tiles(grid, block, mask_block, offset, space, alpha, centers, tiles, counts, sums,
                want_labels):  # fmt: skip
    """Give blocks and tiles that only one centre can be nearest to whole to it; return the
    tiles left open (numbers in ``grid``), their candidate centres, and with ``want_labels``
    each tile's label (1 + its centre; 0: left open or empty)."""
    label_of = np.zeros(grid.n_tiles, dtype=np.intp) if want_labels else None
    split = (centers, space.factor, counts, sums, want_labels)
    if tiles.tiles is not None:
        open_tiles, owner_of, keep = _lloyd.split_cells(*tiles.levels, *split)
        if want_labels:
            label_of[tiles.tiles] = owner_of + 1
        return tiles.tiles[open_tiles], keep, label_of
    # blocks only: the tiles of the blocks left open are found again
    open_blocks, owner_of, _ = _lloyd.split_cells(*tiles.levels, *split)
    in_block = np.arange(grid.per_block)
    if want_labels:
        label_of[(tiles.blocks[:, None] * grid.per_block + in_block).ravel()] = np.repeat(
            owner_of + 1, grid.per_block
        )
    inside = (tiles.blocks[open_blocks, None] * grid.per_block + in_block).ravel()
    builder = _box_builder(grid, block, mask_block, offset, space, alpha)
    lows, highs, totals, _ = _tile_boxes(builder, inside, space.n_features)
    filled = totals[:, -1] > 0
    inside = inside[filled]
    level = ((lows[filled],), (highs[filled],), (totals[filled],), ())
    open_tiles, owner_of, keep = _lloyd.split_cells(*level, *split)
    if want_labels:
        label_of[inside] = owner_of + 1
    return inside[open_tiles], keep, label_of


def _bucket(m: np.ndarray, k: int) -> np.ndarray:
    """The padded length of each candidate list of ``m`` candidates."""
    sizes = np.array([b for b in _BUCKETS if b < k] + [k])
    return sizes[np.searchsorted(sizes, m)]


def _batch_sums(rows, weights, want_labels):
    """Per-candidate raw sums (T, M, d + 1) of a batch of tiles, and with ``want_labels`` each
    pixel's nearest candidate (T, pixels; its position in the tile's list).

    ``weights`` (T, M, d + 1): each tile's distance weights of its candidates
    (:func:`_lloyd.distance_weights`, columns gathered).
    """
    distances = np.matmul(weights, rows)
    local = None
    if want_labels:
        # each pixel's first nearest candidate: a running minimum over the M rows
        local = _lloyd.argmin_columns(distances.transpose(1, 0, 2))
        one_hot = np.equal(local[:, None, :], np.arange(weights.shape[1])[:, None])
        partial = np.matmul(one_hot.astype(np.float64), rows.transpose(0, 2, 1))
    else:
        np.equal(distances, distances.min(axis=1, keepdims=True), out=distances)
        partial = np.matmul(distances, rows.transpose(0, 2, 1))
        # a pixel at the same distance from two candidates counted twice: redo the tiles
        # with the first nearest candidate
        if not np.array_equal(partial[:, :, -1].sum(axis=1), rows[:, -1].sum(axis=1)):
            return _batch_sums(rows, weights, True)[0], None
    return partial, local


def chunk_pass(block, mask_block, offset, space, alpha, centers, tiles, label_dtype=None):
    """One assignment pass over a chunk's pixels, from its :class:`ChunkTiles`.

    Returns the per-cluster counts (k,) and raw sums (k, d) and, with ``label_dtype``, the
    chunk's labels (1 + the nearest centre; 0 where pixels are not clustered).
    """
    grid = TileGrid.for_shape(block.shape[:-1])
    k, d = centers.shape
    want_labels = label_dtype is not None
    counts, sums = np.zeros(k), np.zeros((k, d))
    open_tiles, keep, label_of = _open_tiles(
        grid, block, mask_block, offset, space, alpha, centers, tiles, counts, sums, want_labels
    )
    out = None
    if want_labels:  # the tiles given whole to a centre; the open ones are labelled below
        out = zeros(grid.shape, label_dtype)
        grid.paint_tiles(out, label_of.astype(label_dtype))
        if mask_block is not None or alpha or block.dtype.kind == "f":
            clustered = chunk_values(block, mask_block, alpha)[1]
            if clustered is not None:
                out.reshape(-1)[~clustered] = 0
    if not len(open_tiles):
        return counts, sums, out
    # distance weights with a last column no pixel is near to (the padding of short lists)
    weights_k = np.zeros((d + 1, k + 1))
    weights_k[:, :k] = _lloyd.distance_weights(centers, space.factor)
    weights_k[-1, k] = 1e300
    found = []
    m = np.count_nonzero(keep, axis=1)
    padded = _bucket(m, k)
    # each tile's candidates in increasing order, then padding (k)
    order = np.argsort(~keep, axis=1, kind="stable")
    most = max(1, BATCH_DISTANCES // (int(padded.min()) * grid.pixels))
    builder = _Rows(grid, block, mask_block, offset, space, alpha, min(most, len(open_tiles)))
    for size in np.unique(padded):
        group = np.flatnonzero(padded == size)
        candidates = order[group, :size]
        candidates = np.where(np.arange(size) < m[group, None], candidates, k)
        per_batch = max(1, BATCH_DISTANCES // (size * grid.pixels))
        for start in range(0, len(group), per_batch):
            batch = open_tiles[group[start : start + per_batch]]
            chosen = candidates[start : start + per_batch]
            rows, valid = builder.build(batch)
            weights = weights_k[:, chosen].transpose(1, 2, 0).copy()
            partial, local = _batch_sums(rows, weights, want_labels)
            found.append((chosen, partial))
            if want_labels:
                labels = np.take_along_axis(chosen, local, axis=1) + 1
                grid.paint(out, batch, labels.astype(label_dtype), valid)
    # the batches' per-candidate sums added to their clusters at once (padding: cluster k)
    ids = np.concatenate([chosen.ravel() for chosen, _ in found])
    partial = np.concatenate([p.reshape(-1, d + 1) for _, p in found])
    counts += np.bincount(ids, weights=partial[:, -1], minlength=k + 1)[:k]
    for feature in range(d):
        sums[:, feature] += np.bincount(ids, weights=partial[:, feature], minlength=k + 1)[:k]
    return counts, sums, out
