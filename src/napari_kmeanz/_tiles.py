"""The assignment passes over a chunk's pixels, tile by tile.

The first pass over a chunk records each tile's box (per-feature minimum and maximum of its
clustered pixels) and raw sums (:class:`ChunkTiles`, tiles and blocks as in ``_grid``); the
pixels do not change during a run, so neither do these. A pass then tests the blocks against
the centres, the tiles only inside blocks left open (:func:`_prune.split_cells`): a block or
tile that only one centre can be nearest to goes whole to it, from its sums, without its
pixels being read.

The pixels of the open tiles are read in batches, each tile's pixels as one block of a
``(tiles, d + 1, pixels)`` array of raw rows (``_features.TileRows``); tiles with the same
number of candidate centres (padded, see ``_BUCKETS``) are batched together, and each tile's
distances to its own candidates are one small product (:func:`_kernels.nearest_sums`, or
:func:`_kernels.nearest_sums_many` for over ``ONE_HOT_MAX`` candidates). A tile that keeps
many candidates first has them narrowed by its own pixels (:func:`_refined`).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field

import numpy as np

from ._compute import zeros
from ._features import Chunk, FeatureSpace, TileRows
from ._grid import TileGrid
from ._kernels import ONE_HOT_MAX, distance_weights, nearest_sums, nearest_sums_many
from ._prune import CandidateLists, split_cells

# Distances computed per batch of open tiles (tiles x candidates x pixels): 2 MiB of float64
# for tiles of few candidates (up to ONE_HOT_MAX), 1 MiB for many; and raw rows built per
# batch (tiles x (d + 1) x pixels): at most 2 MiB. A batch is some 40 numpy calls whatever
# its size, each holding the interpreter's lock a while, so two threads gain more from fewer
# batches: on a 2048x3072 photo, 5-D, k=16, a round ran 1.18-1.22x faster on two threads
# than on one with batches of 2^17 distances (42 tiles), 1.37-1.40x with 2^18 and 1.38-1.59x
# with 2^19 (the same time on one, three runs each); but 2^19 held 9.4 MiB more at k=1000
# (traced), 2^18 2.4 MiB; rows of at most 2^18 numbers took that back (24.3 MiB against
# 27.5 at the peak) at the same speed on two threads, and with the six kinds of feature.
BATCH_DISTANCES = 1 << 18
MANY_BATCH_DISTANCES = 1 << 17
BATCH_ROWS = 1 << 18
# Largest image (in pixels) whose runs keep every tile's box between passes: with position
# features, about half a byte per pixel (a box and sums per 256 pixels). Beyond, they keep the
# blocks' (1/16 of that), and each pass finds again the tiles of the blocks it leaves open.
CACHED_PIXELS = 1 << 28
# A padded candidate list holds one of these many candidates (or k); padding is a centre that
# no pixel is near to, at PAD_DISTANCE from every pixel. The sizes grow by 1.5x up to 1024
# (then 2x), so a tile weighs at most 1.5x its candidates. With many clusters some tiles,
# across strong edges, keep hundreds: on a 2048x3072 photo, 5-D, k=1000, a tenth keep over
# 245 and the median 10. Padded to k (the sizes stopped at 64), the passes took 2.4x longer.
_BUCKETS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
_BUCKETS += tuple(1 << b for b in range(11, 31))
PAD_DISTANCE = 1e300
# Tiles that keep more candidates than REFINE_FROM have them narrowed by their own pixels
# (:func:`_refined`), REFINE_BATCH tiles at a time, from REFINE_PROBES probe centres. A tile
# across a strong edge has a wide box, and the box bound keeps most centres: on a 2048x3072
# photo, 5-D, k=1000, the tiles over 24 candidates held 1.12 M of a pass's 1.18 M, and 0.25 M
# once narrowed; the distances of the pass then took 0.5 s instead of 4 s (one thread), and
# the rounds after the first 4.1-4.3 s instead of 5.3 s (min of 4, process time; from 24, 48
# or 96, and 8 or 16 probes alike). The same labels: no centre left out can be nearest.
REFINE_FROM = 24
REFINE_BATCH = 64
REFINE_PROBES = 8
# The batches' per-candidate sums are added to their clusters once they hold this many
# (tile, candidate) pairs (1.5 MiB in 5-D), not all at the end: on a 2048x3072 photo, 5-D,
# k=1000, a chunk's held about 20 MiB by then.
PENDING_SUMS = 1 << 15


@dataclass(frozen=True, eq=False)
class ChunkTiles:
    """What the passes need to know of a chunk's tiles, found once in the first pass.

    ``blocks`` and ``tiles`` are the blocks and tiles holding clustered pixels (numbers in
    the chunk's :class:`TileGrid`: a block ``b`` holds tiles ``b * per_block`` onwards);
    ``levels`` their boxes and sums as :func:`_prune.split_cells` takes them (lows, highs,
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


def _tile_boxes(builder: TileRows, tiles: np.ndarray, d: int):
    """Box, raw sums and count of each of the tiles, and the per-feature sums of squares of
    their clustered pixels' raw rows."""
    per_batch = builder.size
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


def record(chunk: Chunk, space: FeatureSpace, cache_tiles: bool = True) -> ChunkTiles:
    """A chunk's :class:`ChunkTiles`: each tile's box, raw sums and count, and its blocks';
    the tiles' are kept with ``cache_tiles``."""
    grid = TileGrid.for_shape(chunk.shape)
    builder = TileRows.batches(grid, chunk, space)
    every_tile = np.arange(grid.n_tiles)
    lows, highs, totals, squares = _tile_boxes(builder, every_tile, space.n_features)
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
    if not cache_tiles:
        return ChunkTiles(blocks, None, (*((a,) for a in block_level), ()), squares)
    tile_level = (lows, highs, totals)
    levels = (*((a, b) for a, b in zip(block_level, tile_level, strict=True)), (parents,))
    return ChunkTiles(blocks, filled, levels, squares)


def _open_tiles(grid, chunk, space, centers, tiles: ChunkTiles, into, want_labels):
    """Give blocks and tiles that only one centre can be nearest to whole to it (their sums
    added to ``into``, the pass's counts and sums); return the tiles left open (numbers in
    ``grid``), their candidate centres, and with ``want_labels`` each tile's label (1 + its
    centre; 0: left open or empty)."""
    label_of = np.zeros(grid.n_tiles, dtype=np.intp) if want_labels else None
    split = (centers, space.factor, *into, want_labels)
    if tiles.tiles is not None:
        open_tiles, owner_of, candidates = split_cells(*tiles.levels, *split)
        if want_labels:
            label_of[tiles.tiles] = owner_of + 1
        return tiles.tiles[open_tiles], candidates, label_of
    # blocks only: the tiles of the blocks left open are found again
    open_blocks, owner_of, _ = split_cells(*tiles.levels, *split)
    in_block = np.arange(grid.per_block)
    if want_labels:
        label_of[(tiles.blocks[:, None] * grid.per_block + in_block).ravel()] = np.repeat(
            owner_of + 1, grid.per_block
        )
    inside = (tiles.blocks[open_blocks, None] * grid.per_block + in_block).ravel()
    builder = TileRows.batches(grid, chunk, space)
    lows, highs, totals, _ = _tile_boxes(builder, inside, space.n_features)
    filled = totals[:, -1] > 0
    inside = inside[filled]
    level = ((lows[filled],), (highs[filled],), (totals[filled],), ())
    open_tiles, owner_of, candidates = split_cells(*level, *split)
    if want_labels:
        label_of[inside] = owner_of + 1
    return inside[open_tiles], candidates, label_of


def _bucket(m: np.ndarray, k: int) -> np.ndarray:
    """The padded length of each candidate list of ``m`` candidates."""
    sizes = np.array([b for b in _BUCKETS if b < k] + [k])
    return sizes[np.searchsorted(sizes, m)]


def chunk_pass(
    chunk: Chunk, space: FeatureSpace, centers, tiles: ChunkTiles, label_dtype=None, out=None
):
    """One assignment pass over a chunk's pixels, from its :class:`ChunkTiles`.

    Returns the per-cluster counts (k,) and raw sums (k, d) and, with ``label_dtype``, the
    chunk's labels (1 + the nearest centre; 0 where pixels are not clustered), written to
    ``out`` (of the chunk's shape, any strides) when given.
    """
    grid = TileGrid.for_shape(chunk.shape)
    k, d = centers.shape
    counts, sums = np.zeros(k), np.zeros((k, d))
    want_labels = label_dtype is not None
    open_tiles, candidates, label_of = _open_tiles(
        grid, chunk, space, centers, tiles, (counts, sums), want_labels
    )
    if want_labels:
        out = _whole_tile_labels(grid, chunk, label_of, label_dtype, out)
    if not len(open_tiles):
        return counts, sums, out
    candidates = _refined(grid, chunk, space, centers, open_tiles, candidates)
    found, all_weights = [], _padded_weights(centers, space.factor)
    for batch, chosen, rows, valid in _open_batches(grid, chunk, space, open_tiles, candidates):
        if chosen.shape[1] > ONE_HOT_MAX:
            weights = all_weights[:, chosen].transpose(1, 0, 2)
            partial, local = nearest_sums_many(rows.transpose(0, 2, 1), weights)
        else:
            weights = all_weights[:, chosen].transpose(1, 2, 0).copy()
            distances_of = functools.partial(np.matmul, weights, rows)
            partial, local = nearest_sums(distances_of, rows.transpose(0, 2, 1), want_labels)
        found.append((chosen.ravel(), partial.reshape(-1, d + 1)))
        if len(found) * chosen.size > PENDING_SUMS:  # (about: batches hold alike)
            _add_found(found, counts, sums)
        if want_labels:
            labels = np.take_along_axis(chosen, local, axis=1) + 1
            grid.paint(out, batch, labels.astype(label_dtype), valid)
    _add_found(found, counts, sums)
    return counts, sums, out


def _add_found(found: list, counts: np.ndarray, sums: np.ndarray) -> None:
    """Add the batches' per-candidate sums ``found`` (candidate ids, (n, d + 1) sums; padding
    is cluster k) to their clusters' ``counts`` and ``sums``, in place, and empty it."""
    if not found:
        return
    k = len(counts)
    ids = np.concatenate([ids for ids, _ in found])
    partial = np.concatenate([part for _, part in found])
    found.clear()
    # one bincount over (cluster, column) pairs: each pair's terms in the same order as a
    # bincount per column would add them, so the same sums
    width = partial.shape[1]
    pairs = (ids.astype(np.intp)[:, None] * width + np.arange(width)).ravel()  # (ids: int16)
    total = np.bincount(pairs, weights=partial.ravel(), minlength=(k + 1) * width)
    total = total.reshape(k + 1, width)[:k]
    counts += total[:, -1]
    sums += total[:, :-1]


def _refined(grid, chunk, space, centers, open_tiles, lists: CandidateLists) -> CandidateLists:
    """The candidate ``lists`` of the open tiles, those of the tiles that keep many (over
    REFINE_FROM) narrowed by the tiles' own pixels: if every pixel of a tile is within ``U``
    of one of a few probes (its candidates nearest the tile's box), a centre farther than
    ``U`` from the box is nearer to none of them (with the rounding margin of
    ``_prune.box_candidates``)."""
    k = len(centers)
    many = np.flatnonzero(lists.counts > REFINE_FROM)
    if not len(many):
        return lists
    factor = space.factor
    weights = distance_weights(centers, factor)
    columns = np.vstack([centers, np.full((1, centers.shape[1]), np.inf)]).T.copy()
    centre_scale = float(np.max(np.einsum("ij,ij->i", centers, centers)))
    builder = TileRows(grid, chunk, space, min(REFINE_BATCH, len(many)))
    kept, counts = np.ones(len(lists.ids), dtype=bool), lists.counts.copy()
    for start in range(0, len(many), REFINE_BATCH):
        batch = many[start : start + REFINE_BATCH]
        rows, valid = builder.build(open_tiles[batch])
        at = lists.positions(batch)  # (the batch's lists, in order)
        wanted = CandidateLists(lists.counts[batch], lists.ids[at], k)
        wanted = wanted.padded(int(lists.counts[batch].max()))
        near = _narrowed(rows, valid, factor, weights, columns, wanted, centre_scale)
        real = wanted < k  # (the padding is no candidate)
        near &= real
        kept[at] = near[real]
        counts[batch] = np.count_nonzero(near, axis=1)
    return CandidateLists(counts, lists.ids[kept], k)


def _narrowed(rows, valid, factor, weights, columns, wanted, centre_scale):
    """Which of each tile's candidates ``wanted`` (T, M; padding k) can be nearest to one of
    its pixels ``rows`` (T, d + 1, p); ``columns`` (d, k + 1) are the centres feature by
    feature, inf for padding."""
    n_tiles, width = rows.shape[0], rows.shape[1] - 1
    shown = None if valid is None else ~valid
    lower, squares, high_sq = np.zeros(wanted.shape), 0.0, np.zeros(n_tiles)
    for feature in range(width):  # on (T, M) and (T, p) arrays: no (T, M, d) temporaries
        values = rows[:, feature] * factor[feature]
        squares = squares + values * values
        if shown is None:
            low, high = values.min(axis=1), values.max(axis=1)
        else:
            low = np.where(shown, np.inf, values).min(axis=1)
            high = np.where(shown, -np.inf, values).max(axis=1)
        centre = columns[feature][wanted]
        gap = np.maximum(low[:, None] - centre, centre - high[:, None])
        np.maximum(gap, 0.0, out=gap)
        gap *= gap
        lower += gap  # from each candidate to the tile's box
        high_sq += high * high
    probes = np.argpartition(lower, REFINE_PROBES - 1, axis=1)[:, :REFINE_PROBES]
    ids = np.take_along_axis(wanted, probes, axis=1)
    probe_weights = weights[:, ids].transpose(1, 2, 0)  # (T, P, d + 1)
    nearest = (np.matmul(probe_weights, rows) + squares[:, None, :]).min(axis=1)
    if shown is not None:
        nearest[shown] = -np.inf
    reach = nearest.max(axis=1)
    reach[np.isneginf(reach)] = np.inf  # (a tile with no clustered pixel: keep them all)
    reach += 1e-9 * (np.abs(reach) + centre_scale + high_sq)
    return lower <= reach[:, None]


def _whole_tile_labels(grid, chunk, label_of, label_dtype, out=None):
    """The chunk's labels of the tiles given whole to a centre (the open ones are painted
    over by the pass), 0 where pixels are not clustered; in ``out`` when given."""
    out = zeros(grid.shape, label_dtype) if out is None else out
    grid.paint_tiles(out, label_of.astype(label_dtype))
    if chunk.mask is not None or chunk.alpha or chunk.block.dtype.kind == "f":
        clustered = chunk.clustered()
        if clustered is not None:
            out[~clustered] = 0
    return out


def _padded_weights(centers, factor):
    """Distance weights (d + 1, k + 1) of the centres, with a last column no pixel is near
    to: the padding of short candidate lists."""
    k, d = centers.shape
    weights = np.zeros((d + 1, k + 1))
    weights[:, :k] = distance_weights(centers, factor)
    weights[-1, k] = PAD_DISTANCE
    return weights


def _open_batches(grid, chunk, space, open_tiles, lists: CandidateLists):
    """Batches of open tiles with the same padded number of candidates (their ``lists``):
    yields the tiles, their candidates (T, M; padding k), their rows and which pixels are
    clustered."""
    padded = _bucket(lists.counts, lists.k)
    tile_rows = (space.n_features + 1) * grid.pixels  # numbers in a tile's rows

    def tiles_per_batch(size: int) -> int:
        distances = BATCH_DISTANCES if size <= ONE_HOT_MAX else MANY_BATCH_DISTANCES
        return max(1, min(distances // (size * grid.pixels), BATCH_ROWS // tile_rows))

    builder = TileRows(
        grid, chunk, space, min(tiles_per_batch(int(padded.min())), len(open_tiles))
    )
    for size in np.unique(padded):
        group = np.flatnonzero(padded == size)
        candidates = lists.take(group).padded(int(size))
        per_batch = tiles_per_batch(int(size))
        for start in range(0, len(group), per_batch):
            batch = open_tiles[group[start : start + per_batch]]
            rows, valid = builder.build(batch)
            yield batch, candidates[start : start + per_batch], rows, valid
