"""The assignment passes over a chunk's pixels, tile by tile.

The first pass over a chunk records each tile's box (per-feature minimum and maximum of its
clustered pixels) and raw sums (:class:`ChunkTiles`, tiles and blocks as in ``_grid``); the
pixels do not change during a run, so neither do these. A pass then tests the blocks against
the centres, the tiles only inside blocks left open (:func:`_prune.split_cells`): a block or
tile that only one centre can be nearest to goes whole to it, from its sums, without its
pixels being read.

The pixels of the open tiles are read in batches of consecutive tiles, each tile's pixels as
one block of a ``(tiles, d + 1, pixels)`` array of raw rows (``_rows.TileRows``), and
each tile's pixels are weighed against its own candidate centres by the compiled kernel
(:func:`_kernels.nearest_sums`). A tile that keeps many candidates first has them narrowed by
its own pixels (:func:`_refined`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from ._compute import zeros
from ._features import Chunk, FeatureSpace
from ._grid import TileGrid
from ._jit import helper, kernel
from ._kernels import distance_weights, nearest_sums
from ._prune import CandidateLists, split_cells
from ._rows import TileRows

# Raw rows built per batch of open tiles (tiles x (d + 1) x pixels): at most 2 MiB, in cache.
BATCH_ROWS = 1 << 18
# Largest image (in pixels) whose runs keep every tile's box between passes: with position
# features, about half a byte per pixel (a box and sums per 256 pixels). Beyond, they keep the
# blocks' (1/16 of that), and each pass finds again the tiles of the blocks it leaves open.
CACHED_PIXELS = 1 << 28
# Tiles that keep more candidates than REFINE_FROM have them narrowed by their own pixels
# (:func:`_narrowed`), REFINE_BATCH tiles at a time, from REFINE_PROBES probe centres. On a
# 2048x3072 photo, 5-D, k=1000 (before the kernels were compiled), the distances of a pass
# then took 0.5 s instead of 4 s (one thread), and the rounds after the first 4.1-4.3 s
# instead of 5.3 s (min of 4, process time; from 24, 48 or 96, and 8 or 16 probes alike).
# With the kernels compiled, weighing a candidate costs less than narrowing it away did at
# 24: a run of 3 rounds at k=1000 took 1.47-1.56 s from 64 against 1.65-1.71 s from 24 (and
# 1.93 s with no narrowing; 48, 96 and 128 about as 64), the 512x512 5-D k=50 run 0.170
# against 0.183 s (medians of 9), the 2048x3072 k=200 one 0.73 against 0.75 s.
# The same labels: no centre left out can be nearest.
REFINE_FROM = 64
REFINE_BATCH = 64
REFINE_PROBES = 8


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
    their clustered pixels' raw rows (:func:`_boxes`)."""
    per_batch = builder.size
    lows, highs = np.empty((len(tiles), d)), np.empty((len(tiles), d))
    totals, squares = np.empty((len(tiles), d + 1)), np.zeros(d)
    for start in range(0, len(tiles), per_batch):
        batch = slice(start, start + per_batch)
        rows, valid = builder.build(tiles[batch])
        shown = _ALL_SHOWN if valid is None else valid
        _boxes(rows, shown, valid is not None, lows[batch], highs[batch], totals[batch], squares)
    return lows, highs, totals, squares


_ALL_SHOWN = np.ones((1, 1), dtype=bool)  # (read only where some pixels are not)


@kernel(
    *(
        f"({rows}[:, :, ::1], boolean[:, ::1], boolean, float64[:, ::1], float64[:, ::1],"
        " float64[:, ::1], float64[::1])"
        for rows in ("float64", "float32")
    )
)
def _boxes(rows, valid, hidden, lows, highs, totals, squares):  # pragma: no cover (``_jit``)
    """Each tile's box of its clustered pixels' raw rows (``rows`` (T, d + 1, pixels); with
    ``hidden``, ``valid`` (T, pixels) says which pixels are clustered, and the others' rows
    are zero) to ``lows`` and ``highs`` (inf and -inf for none), its sums and count to
    ``totals``; the sums of squares of every feature added to ``squares``, in float64."""
    n_tiles, width, n = rows.shape
    for t in range(n_tiles):
        for f in range(width):
            low, high, total, square = np.inf, -np.inf, 0.0, 0.0
            for p in range(n):
                value = np.float64(rows[t, f, p])
                if not hidden or valid[t, p]:
                    low = min(low, value)
                    high = max(high, value)
                total += value
                square += value * value
            totals[t, f] = total
            if f < width - 1:
                lows[t, f], highs[t, f] = low, high
                squares[f] += square


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
    weights, totals = distance_weights(centers, space.factor), np.zeros((k, d + 1))
    batches = _open_batches(grid, chunk, space, open_tiles, candidates)
    for batch, candidates_of, rows, valid in batches:
        local = np.empty((len(batch), grid.pixels), dtype=np.intp) if want_labels else None
        nearest_sums(rows, rows, weights, *candidates_of, totals, local)
        if want_labels:
            grid.paint(out, batch, (local + 1).astype(label_dtype), valid)
    counts += totals[:, -1]
    sums += totals[:, :-1]
    return counts, sums, out


def _refined(grid, chunk, space, centers, open_tiles, lists: CandidateLists) -> CandidateLists:
    """The candidate ``lists`` of the open tiles, those of the tiles that keep many (over
    REFINE_FROM) narrowed by the tiles' own pixels (:func:`_narrowed`), REFINE_BATCH tiles
    at a time."""
    many = np.flatnonzero(lists.counts > REFINE_FROM)
    if not len(many):
        return lists
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    weights = distance_weights(centers, space.factor)
    centre_scale = float(np.max(np.einsum("ij,ij->i", centers, centers)))
    builder = TileRows(grid, chunk, space, min(REFINE_BATCH, len(many)))
    ids, firsts, wanted = lists.kernel_arrays
    keep, counts = np.ones(len(ids), dtype=bool), lists.counts.copy()
    for start in range(0, len(many), REFINE_BATCH):
        batch = many[start : start + REFINE_BATCH]
        rows, valid = builder.build(open_tiles[batch])
        valid = np.ones(rows.shape[::2], bool) if valid is None else np.ascontiguousarray(valid)
        kept = np.empty(len(batch), dtype=np.intp)
        tiles = (rows, valid, space.factor, weights, centers)
        _narrowed(*tiles, ids, firsts[batch], wanted[batch], centre_scale, REFINE_PROBES, keep,
                  kept)  # fmt: skip
        counts[batch] = kept
    return CandidateLists(counts, lists.ids[keep], lists.k)


@kernel(
    *(
        f"({rows}[:, :, ::1], boolean[:, ::1], float64[::1], float64[:, ::1], float64[:, ::1],"
        " intp[::1], intp[::1], intp[::1], float64, intp, boolean[::1], intp[::1])"
        for rows in ("float64", "float32")  # (float32: rows it holds exactly, see TileRows)
    )
)
def _narrowed(
    rows,
    valid,
    factor,
    weights,
    centers,
    ids,
    firsts,
    counts,
    centre_scale,
    n_probes,
    keep,
    kept,
):  # pragma: no cover (compiled: ``_jit``)
    """Which of each tile's candidates ``ids[firsts[t]:firsts[t] + counts[t]]`` can be
    nearest to one of its clustered pixels (``rows`` (T, d + 1, p), ``valid`` (T, p)):
    ``keep`` at the candidates' places, how many each tile keeps in ``kept``.

    If every pixel of a tile is within ``U`` of one of ``n_probes`` probes (its candidates
    nearest the box of its pixels), a centre farther than ``U`` from the box is nearer to none
    of them; the bound keeps the rounding margin of ``_prune.box_lists``. A tile across a
    strong edge has a wide box, and the box test keeps most centres: on a 2048x3072 photo,
    5-D, k=1000, the tiles over 24 candidates held 1.12 M of a pass's 1.18 M, and 0.25 M once
    narrowed.
    """
    n_tiles, width, n = rows.shape
    d = width - 1
    widest = 0
    for t in range(n_tiles):
        widest = max(widest, counts[t])
    lower = np.empty(widest)
    low, high = np.empty(d), np.empty(d)
    squares, nearest = np.empty(n), np.empty(n)
    probes, probe_lower = np.empty(n_probes, dtype=np.intp), np.empty(n_probes)
    for t in range(n_tiles):
        first, m = firsts[t], counts[t]
        # the box of the clustered pixels and each pixel's squared norm, in feature units
        squares[:] = 0.0
        high_sq, shown = 0.0, 0
        for f in range(d):
            low[f], high[f] = np.inf, -np.inf
            for p in range(n):
                value = rows[t, f, p] * factor[f]
                squares[p] += value * value
                if valid[t, p]:
                    low[f] = min(low[f], value)
                    high[f] = max(high[f], value)
            high_sq += high[f] * high[f]
        for p in range(n):
            shown += valid[t, p]
        for j in range(m):  # each candidate's distance to the box
            gaps = 0.0
            for f in range(d):
                x = centers[ids[first + j], f]
                gap = max(max(low[f] - x, x - high[f]), 0.0)
                gaps += gap * gap
            lower[j] = gaps
        n_chosen = _nearest_probes(lower[:m], probes, probe_lower)
        reach = -np.inf
        for p in range(n):
            nearest[p] = np.inf
        for q in range(n_chosen):
            centre = ids[first + probes[q]]
            for p in range(n):
                distance = squares[p]
                for f in range(width):
                    distance += rows[t, f, p] * weights[f, centre]
                nearest[p] = min(nearest[p], distance)
        for p in range(n):
            if valid[t, p]:
                reach = max(reach, nearest[p])
        if shown == 0:
            reach = np.inf  # (no clustered pixel: keep them all)
        reach += 1e-9 * (abs(reach) + centre_scale + high_sq)
        held = 0
        for j in range(m):
            keep[first + j] = lower[j] <= reach
            held += lower[j] <= reach
        kept[t] = held


@helper
def _nearest_probes(lower, probes, probe_lower):  # pragma: no cover (compiled with _narrowed)
    """The places of the (at most ``len(probes)``) smallest ``lower``, in order, the first on
    ties, written to ``probes`` by insertion (``probe_lower``: their values); returns how
    many."""
    n_chosen = min(len(probes), len(lower))
    if n_chosen == 0:
        return 0
    probe_lower[:] = np.inf
    for j in range(len(lower)):
        value, q = lower[j], n_chosen - 1
        if value < probe_lower[q]:
            while q > 0 and probe_lower[q - 1] > value:
                probe_lower[q], probes[q] = probe_lower[q - 1], probes[q - 1]
                q -= 1
            probe_lower[q], probes[q] = value, j
    return n_chosen


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


def _open_batches(grid, chunk, space, open_tiles, lists: CandidateLists):
    """Batches of consecutive open tiles: yields the tiles, their candidates as
    :func:`_kernels.nearest_sums` takes them (ids, firsts, counts), their rows and which pixels are
    clustered."""
    per_batch = max(1, BATCH_ROWS // ((space.n_features + 1) * grid.pixels))
    builder = TileRows(grid, chunk, space, min(per_batch, len(open_tiles)))
    ids, firsts, counts = lists.kernel_arrays
    for start in range(0, len(open_tiles), per_batch):
        batch = slice(start, start + per_batch)
        rows, valid = builder.build(open_tiles[batch])
        yield open_tiles[batch], (ids, firsts[batch], counts[batch]), rows, valid
