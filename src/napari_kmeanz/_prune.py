"""Pruning: which centres can be nearest to some point of a box, and nested cells of points
given whole to a centre.

The passes leave out, for a group of points with a known box (a sub-block of rows, a cell of
colours, a tile or block of pixels), every centre that cannot be nearest to any of them
(:func:`box_lists`). Where a single centre is left, the group goes whole to it from its
sums, without its points being read. Nested groups are tested level by level
(:func:`split_cells`): the colours' Z-order cells (:class:`PointCells`) and a chunk's blocks
and tiles (``_tiles``) both go through it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._jit import helper, kernel
from ._watch import checkpoint

# Box-centre pairs tested at a time (4096 boxes at k=32, 131 at k=1000): the candidates kept
# are written to 1 MiB at most, and between two slices a run can be cancelled.
BOX_SLICE = 1 << 17
# Boxes of at least this many features have their candidates narrowed pair by pair
# (:func:`_pair_narrowed`) after the box test. The box test weighs a centre's distance to the
# box against every centre's farthest corner, which a box across a diagonal edge leaves loose:
# on a 2048x2048 photo, 5-D with the six kinds of feature, k=8, a tile kept 4.6 candidates
# and 35% of the tiles were open; narrowed, 3.3 and 27% (what its pixels need: 2.3 and 23%).
# With few features the box test is tight enough that the narrowing costs more than it saves
# (measured in numpy, before the test was compiled): 512x512 photos, colour-only k=16 109-129
# -> 141-146 ms, 5-D k=50 192-218 -> 230 ms; a round over a 2048x2048 photo with "gaussian"
# and "std" (8 features) 36 -> 41 ms; with the six kinds (25 features in RGB, 11 in grey,
# k=8) a round 98-102 -> 89-95 ms in RGB, 47-49 -> 44-47 ms in grey.
PAIR_FROM = 10


@kernel(
    "(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[::1], intp[::1], intp[::1],"
    " intp[::1], float64, boolean, intp[::1], intp[::1])"
)
def _box_lists(
    lows, highs, centers, factor, ids, firsts, counts, centre_scale, pairs, kept_ids, kept_counts
):  # pragma: no cover
    """The compiled kernel of :func:`box_lists` (``_jit``: coverage cannot see inside).

    Box ``b`` weighs ``ids[firsts[b]:firsts[b] + counts[b]]``; those it keeps are written to
    ``kept_ids`` one box after another, their number to ``kept_counts[b]``. Returns how many
    were written. With ``pairs``, those the box test keeps are then narrowed pair by pair
    against the one nearest the box's middle (see :func:`box_lists`).
    """
    n_boxes, d = lows.shape
    widest = 0
    for b in range(n_boxes):
        widest = max(widest, counts[b])
    lower = np.empty(widest)
    low, high = np.empty(d), np.empty(d)
    written = 0
    for b in range(n_boxes):
        high_sq = 0.0
        for f in range(d):
            low[f] = lows[b, f] * factor[f]
            high[f] = highs[b, f] * factor[f]
            high_sq += high[f] * high[f]
        first, m = firsts[b], counts[b]
        reach = np.inf
        for j in range(m):
            gaps, far = 0.0, 0.0
            for f in range(d):
                x = centers[ids[first + j], f]
                below, above = low[f] - x, x - high[f]  # > 0: the centre is below / above
                gap = max(max(below, above), 0.0)  # from the centre to the box
                gaps += gap * gap
                face = max(-below, high[f] - x)  # to the farther face
                far += face * face
            lower[j] = gaps
            reach = min(reach, far)
        reach += 1e-9 * (reach + (centre_scale + high_sq))
        kept = 0
        for j in range(m):
            if lower[j] <= reach:
                kept_ids[written + kept] = ids[first + j]
                kept += 1
        if pairs and kept > 1:
            kept = _pair_narrowed(kept_ids[written : written + kept], low, high, centers)
        kept_counts[b] = kept
        written += kept
    return written


@helper
def _pair_narrowed(chosen, low, high, centers):  # pragma: no cover (compiled with _box_lists)
    """Narrow a box's candidates ``chosen`` (in place, in order) against ``best``, the first
    of them nearest the box's middle: ``|x - c|**2 - |x - best|**2`` is linear in ``x``, so
    its least value over the box (``low``, ``high``, feature units) is exact, a feature at a
    time; a candidate whose least value is above 0 (beyond the rounding margin of the box
    test) is farther than ``best`` from every point of the box. Returns how many are kept."""
    d = len(low)
    best, nearest = chosen[0], np.inf
    for j in range(len(chosen)):
        near = 0.0
        for f in range(d):
            off = centers[chosen[j], f] - (low[f] + high[f]) / 2
            near += off * off
        if near < nearest:
            best, nearest = chosen[j], near
    best_sq = 0.0
    for f in range(d):
        best_sq += centers[best, f] * centers[best, f]
    kept = 0
    for j in range(len(chosen)):
        c = chosen[j]
        least, size, c_sq = 0.0, 0.0, 0.0
        for f in range(d):
            delta = 2.0 * (centers[best, f] - centers[c, f])
            at_low, at_high = delta * low[f], delta * high[f]
            least += min(at_low, at_high)
            size += max(abs(at_low), abs(at_high))
            c_sq += centers[c, f] * centers[c, f]
        if least + c_sq - best_sq <= 1e-9 * (size + c_sq + best_sq):
            chosen[kept] = c
            kept += 1
    return kept


def box_lists(lows, highs, centers, factor, ids, firsts, counts, centre_scale=None):
    """Which of its candidates can be the nearest centre to some point of each of several
    boxes, as :class:`CandidateLists`.

    A box holds points between a per-feature minimum and maximum (raw units). A centre whose
    distance to the box exceeds another candidate's distance to the box's farthest corner is
    farther from every point of the box than that one, and is left out; with PAIR_FROM
    features or more, those kept are narrowed pair by pair (:func:`_pair_narrowed`). The
    bounds keep a small margin for rounding, so pruning never changes which centre is nearest.

    Parameters
    ----------
    lows, highs : ndarray of shape (b, d)
        Raw per-feature minimum and maximum of each box.
    centers : ndarray of shape (k, d)
    factor : ndarray of shape (d,)
    ids, firsts, counts : ndarray of int
        Box ``i`` weighs the centres ``ids[firsts[i]:firsts[i] + counts[i]]`` (increasing).
    centre_scale : float, optional
        The largest squared norm of the centres, for the rounding margin (default: found).
    """
    k = len(centers)
    if centre_scale is None:
        centre_scale = float(np.max(np.einsum("ij,ij->i", centers, centers)))
    intp = functools.partial(np.ascontiguousarray, dtype=np.intp)
    counts = intp(counts)
    kept_ids, kept_counts = np.empty(int(counts.sum()), dtype=np.intp), np.empty_like(counts)
    as_float = functools.partial(np.ascontiguousarray, dtype=np.float64)
    arrays = (as_float(lows), as_float(highs), as_float(centers), as_float(factor))
    pairs = centers.shape[1] >= PAIR_FROM
    written = _box_lists(*arrays, intp(ids), intp(firsts), counts, centre_scale, pairs, kept_ids,
                         kept_counts)  # fmt: skip
    return CandidateLists(kept_counts, kept_ids[:written].astype(CandidateLists.id_dtype(k)), k)


@dataclass(frozen=True, eq=False)
class CandidateLists:
    """The candidate centres of each of ``n`` cells, as lists: ``counts`` (n,) how many each
    cell has and ``ids`` all of them, cell after cell, increasing within a cell (of ``k``
    centres). With many centres a cell keeps few of them: flags (n, k) would hold k bytes a
    cell (12 MiB for a chunk's 12288 tiles at k=1000), the lists 2 bytes a candidate (4 for
    k >= 2^15)."""

    counts: np.ndarray
    ids: np.ndarray
    k: int

    @staticmethod
    def id_dtype(k: int) -> type:
        """The dtype of the ids of k centres."""
        return np.int16 if k < 1 << 15 else np.int32

    @classmethod
    def joined(cls, parts: list[CandidateLists], k: int) -> CandidateLists:
        """The lists of consecutive runs of cells, one after the other."""
        if not parts:
            return cls(np.zeros(0, np.intp), np.zeros(0, cls.id_dtype(k)), k)
        counts = np.concatenate([part.counts for part in parts])
        return cls(counts, np.concatenate([part.ids for part in parts]), k)

    @functools.cached_property
    def starts(self) -> np.ndarray:
        """Where each cell's candidates start in ``ids``."""
        return np.cumsum(self.counts) - self.counts

    @functools.cached_property
    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``ids``, ``starts`` and ``counts`` as the compiled kernels take a group's
        candidates (``ids[firsts[g]:firsts[g] + counts[g]]``), intp."""
        return tuple(a.astype(np.intp, copy=False) for a in (self.ids, self.starts, self.counts))

    def where(self, kept: np.ndarray) -> CandidateLists:
        """The lists of the cells where ``kept`` (n,) is True, in order."""
        return CandidateLists(self.counts[kept], self.ids[np.repeat(kept, self.counts)], self.k)


def box_candidate_lists(lows, highs, centers, factor) -> CandidateLists:
    """:func:`box_lists` of many boxes, each weighing every centre: BOX_SLICE box-centre
    pairs at a time (between two, a run can be cancelled)."""
    k = len(centers)
    centre_scale = float(np.max(np.einsum("ij,ij->i", centers, centers)))
    per_slice, parts = max(1, BOX_SLICE // k), []
    every = np.arange(k)
    for start in range(0, len(lows), per_slice):
        checkpoint()
        box = slice(start, start + per_slice)
        n = len(lows[box])
        firsts, counts = np.zeros(n, dtype=np.intp), np.full(n, k, dtype=np.intp)
        parts.append(box_lists(lows[box], highs[box], centers, factor, every, firsts, counts,
                               centre_scale))  # fmt: skip
    return CandidateLists.joined(parts, k)


@dataclass(frozen=True, eq=False)
class PointCells:
    """Points sorted into nested cells, for passes that give a cell whole to one centre.

    The points are sorted by an integer key such that the points sharing ``key >> shift``
    are close together (a Z-order code of colours: they lie in one cube). Each level groups
    them by ``key >> shift`` for one shift, from the coarsest; per cell it holds where its
    points start, their box (raw minimum and maximum) and their weighted raw sums and weight.
    A pass tests the cells of the coarsest level against the centres (see
    :func:`box_lists`); a cell only one centre can be nearest to goes whole to it, from
    its sums; the cells of the next level are tested only inside the cells left open, and
    the points of the cells still open at the finest level are read.
    """

    starts: tuple[np.ndarray, ...]  # per level: index of each cell's first point
    lows: tuple[np.ndarray, ...]  # per level: (cells, d)
    highs: tuple[np.ndarray, ...]
    totals: tuple[np.ndarray, ...]  # per level: (cells, d + 1), weighted raw sums then weight
    parents: tuple[np.ndarray, ...]  # per level but the first: each cell's cell one level up

    @classmethod
    def build(cls, keys, shifts, columns, weights=None) -> PointCells:
        """Cells of points sorted by ``keys``, one level per shift (largest first);
        ``columns`` are the raw rows with ones (d + 1, n), ``weights`` each point's weight
        (None: 1)."""
        # the finest level from the points, each coarser one from the cells of the level below
        # (measured on 1.1 M colours: 10 ms against 30 ms for three levels from the points)
        cell = keys >> shifts[-1]
        new = np.concatenate([[True], cell[1:] != cell[:-1]])
        first = np.flatnonzero(new)
        starts = [first]
        lows = [np.minimum.reduceat(columns[:-1], first, axis=1).T]
        highs = [np.maximum.reduceat(columns[:-1], first, axis=1).T]
        # weighted sums one feature at a time: no weighted copy of every point is kept
        totals = np.empty((len(first), len(columns)))
        for feature, column in enumerate(columns):
            weighted = column if weights is None else column * weights
            totals[:, feature] = np.add.reduceat(weighted, first)
        totals = [totals]
        parents, ids = [], cell[first]
        for finer, shift in zip(shifts[::-1], shifts[-2::-1], strict=False):
            cell = ids >> (shift - finer)
            new = np.concatenate([[True], cell[1:] != cell[:-1]])
            group = np.flatnonzero(new)  # each cell's first cell of the level below
            parents.insert(0, np.cumsum(new) - 1)
            starts.insert(0, starts[0][group])
            lows.insert(0, np.minimum.reduceat(lows[0], group, axis=0))
            highs.insert(0, np.maximum.reduceat(highs[0], group, axis=0))
            totals.insert(0, np.add.reduceat(totals[0], group, axis=0))
            ids = cell[group]
        return cls(*map(tuple, (starts, lows, highs, totals, parents)))


def split_cells(lows, highs, totals, parents, centers, factor, counts, sums, want_labels):
    """Nested cells of points, each cell given whole to a centre where only one can be nearest.

    Level by level from the coarsest (per level: the cells' boxes ``lows`` and ``highs``
    (cells, d), their raw sums and weight ``totals`` (cells, d + 1); per level but the
    first: ``parents``, each cell's cell one level up), the cells inside cells left open are
    tested against the centres (:func:`box_lists`). A cell only one centre can be
    nearest to goes whole to it: its totals are added to ``counts`` and ``sums``.

    Returns
    -------
    open_cells : ndarray of int
        The finest cells left open, in order.
    owner_of : ndarray of int or None
        With ``want_labels``, each finest cell's centre (-1: left open).
    still_open : CandidateLists
        The candidate centres of each open cell.
    """
    is_open = owner_of = still_open = None
    for level, (low, high, total) in enumerate(zip(lows, highs, totals, strict=True)):
        if is_open is None:
            tested = np.arange(len(low))
            found = box_candidate_lists(low, high, centers, factor)
        else:
            tested = np.flatnonzero(is_open[parents[level - 1]])
            if want_labels:
                owner_of = owner_of[parents[level - 1]]
            # the open cells above, in order, and their candidates: each tested cell's lie
            # among its parent's
            above = (np.cumsum(is_open) - 1)[parents[level - 1][tested]]
            boxes = (low[tested], high[tested])
            found = inner_candidates(*boxes, above, still_open, centers, factor)
        single = found.counts == 1
        whole = tested[single]
        owner = found.ids[found.starts[single]]
        add_owned(owner, total[whole], counts, sums)
        if want_labels:
            if owner_of is None:
                owner_of = np.full(len(low), -1, dtype=np.intp)
            owner_of[whole] = owner
        is_open = np.zeros(len(low), dtype=bool)
        is_open[tested[~single]] = True
        still_open = found.where(~single)
    return np.flatnonzero(is_open), owner_of, still_open


def inner_candidates(lows, highs, parent_row, parent_candidates, centers, factor):
    """:func:`box_lists` of cells inside cells already tested, each against its parent's
    candidates only: ``parent_row`` is each cell's row in ``parent_candidates`` (the lists of
    the cells above). A centre that cannot be nearest to a point of the parent cannot be to
    one of its cells; the bound from the parent's candidates alone is still a bound. About
    BOX_SLICE cell-centre pairs at a time. Measured on a 2048x3072 photo, 5-D, k=1000, 3
    rounds, before the test was compiled: 9.2 s against 12.8 s for the run when every cell
    weighed every centre."""
    k = len(centers)
    centre_scale = float(np.max(np.einsum("ij,ij->i", centers, centers)))
    ids, firsts, counts = parent_candidates.kernel_arrays
    firsts, counts = firsts[parent_row], counts[parent_row]
    ends, parts, first = np.cumsum(counts), [], 0
    while first < len(counts):
        checkpoint()
        last = max(first + 1, int(np.searchsorted(ends, ends[first] + BOX_SLICE, "right")))
        part = slice(first, last)
        parts.append(box_lists(lows[part], highs[part], centers, factor, ids, firsts[part],
                               counts[part], centre_scale))  # fmt: skip
        first = last
    return CandidateLists.joined(parts, k)


def add_owned(owner: np.ndarray, totals: np.ndarray, counts: np.ndarray, sums: np.ndarray):
    """Add the raw sums and counts ``totals`` (m, d + 1) of groups of points that go whole to
    one centre each (``owner``, (m,)) to ``counts`` (k,) and ``sums`` (k, d), in place."""
    k = len(counts)
    counts += np.bincount(owner, weights=totals[:, -1], minlength=k)
    for feature in range(sums.shape[1]):
        sums[:, feature] += np.bincount(owner, weights=totals[:, feature], minlength=k)
