"""Numpy kernels of k-means: assignment with per-cluster sums, seeding and the Lloyd loop.

Everything here assumes valid input (the public functions in ``_kmeans`` check it) and works on
*raw* points: a row holds a pixel's coordinates and channel values as they are, and a
per-feature ``factor`` turns a raw row ``r`` into its feature vector ``x = factor * r``. Sums are
taken over raw rows, so for integer images (integer coordinates, integer values) every per-cluster
sum is an exact float64 integer and its value does not depend on how the pixels were split into
chunks; centres are ``factor * sums / counts``.

A *source* of points is anything with the methods of :class:`PointSource`: ``stats`` (one
assignment pass returning per-cluster counts and raw sums), ``sq_total`` (the weighted sum of
squared feature norms, a constant) and ``farthest`` (the points farthest from their centre, used
to relocate empty clusters). :class:`PointSource` holds points in memory; the pixel source in
``_pixels`` runs the same kernels over the chunks of a dask array.
"""

from __future__ import annotations

import functools
import math
import mmap
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import ThreadpoolController

from ._watch import checkpoint

# Rows per sub-block in the kernels: the (rows x k) distance matrix of a sub-block stays in cache.
SUB_BLOCK = 1 << 15
# Points per sub-block for points held in memory (sorted in Z-order, a small block is a
# compact cube of colour space, where few centres are candidates).
POINT_SUB_BLOCK = 1 << 12
# Up to this many candidate centres, a sub-block's per-cluster sums are a one-hot product;
# above, one ``bincount`` per feature. Measured on 32768 rows of 5 features, one thread:
# 0.5 ms against 2.0 ms for 8 candidates, 1.0 against 2.3 for 16, 2.6 against 2.7 for 32,
# 5.5 against 4.8 for 50. The product also runs without the interpreter's lock, where
# ``bincount`` holds it, so two dask threads gain more from it.
ONE_HOT_MAX = 32
# Up to this many clusters, points held in nested cells are pruned cell by cell (see
# PointCells). Measured on the 1.1 M colours of a 4096x4096 photo: a round over them took
# 12 ms against 30 ms for k=16, and 56 ms against 41 ms for k=50, where fewer cells go whole
# to one centre and each test weighs every centre.
CELL_MAX_CLUSTERS = 24
# Boxes tested against the centres at a time: between two slices a run can be cancelled.
# Measured on the 16384 tiles of a 2048x2048 chunk, k=300, 5-D: 0.16 s for all of them at
# once, about 40 ms for 4096.
BOX_SLICE = 4096


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs on one thread in this process (see ``_pixels.compute``).

    The thread pools are looked up once, when first needed: a lookup reads the process's map
    of loaded libraries, which took milliseconds each time, and a run enters this context
    once per pass.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


def zeros(shape, dtype=np.float64) -> np.ndarray:
    """A zero-filled array; a large one in memory of its own.

    Large arrays come from an anonymous map, which the system fills with zeros page by page
    as it is first written. numpy's allocator asks for transparent huge pages for large
    arrays, and on systems set to defragment for them on request (``defrag=madvise``, a common
    default) the first touch can stall: measured here, 0.36 s for 128 MiB against 0.05 s from
    a plain map. Where the system can, the map's pages are made at once (``MAP_POPULATE``):
    the callers write all or most of them.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    size = math.prod(shape) * dtype.itemsize
    if size < 1 << 22:
        return np.zeros(shape, dtype)
    if _POPULATE:  # the pages mapped at once: cheaper than a fault for each page touched
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    else:
        memory = mmap.mmap(-1, size)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)


class TooFewDistinctPoints(ValueError):
    """Raised by seeding when the points hold fewer distinct values than clusters asked for."""

    def __init__(self, n_distinct: int, n_clusters: int):
        self.n_distinct = n_distinct
        self.n_clusters = n_clusters
        super().__init__(
            f"n_clusters={n_clusters} is larger than the number of distinct points "
            f"({n_distinct}); ask for at most {n_distinct} clusters."
        )


def distance_weights(centers: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Matrix ``W`` such that ``[r, 1] @ W == ||factor * r - c||**2 - ||factor * r||**2``.

    Parameters
    ----------
    centers : ndarray of shape (k, d)
        Cluster centres in feature space.
    factor : ndarray of shape (d,)
        Raw-to-feature scale of each feature.

    Returns
    -------
    ndarray of shape (d + 1, k)
    """
    w = np.empty((centers.shape[1] + 1, centers.shape[0]))
    w[:-1] = (-2.0 * factor * centers).T
    w[-1] = np.einsum("ij,ij->i", centers, centers)
    return w


def box_candidates(
    lows: np.ndarray, highs: np.ndarray, centers: np.ndarray, factor: np.ndarray
) -> np.ndarray:
    """Which centres can be the nearest one to some point of each of several boxes.

    A box holds points between a per-feature minimum and maximum (raw units). A centre whose
    distance to the box exceeds another centre's distance to the box's farthest corner is
    farther from every point of the box than that centre, and is left out. The bound keeps a
    small margin for rounding, so pruning never changes which centre is nearest.

    Parameters
    ----------
    lows, highs : ndarray of shape (b, d)
        Raw per-feature minimum and maximum of each box.
    centers : ndarray of shape (k, d)
    factor : ndarray of shape (d,)

    Returns
    -------
    ndarray of bool, shape (b, k)
    """
    if len(lows) > BOX_SLICE:  # each box on its own: slices give the same answer
        parts = []
        for start in range(0, len(lows), BOX_SLICE):
            checkpoint()
            end = start + BOX_SLICE
            parts.append(box_candidates(lows[start:end], highs[start:end], centers, factor))
        return np.concatenate(parts)
    # Worked out feature by feature on (k, b) arrays: a (b, k, d) temporary costs ten times as
    # much for many boxes.
    k, b = len(centers), len(lows)
    lower, upper = np.zeros((k, b)), np.zeros((k, b))
    below, above = np.empty((k, b)), np.empty((k, b))
    high_sq = np.zeros(b)
    for feature in range(centers.shape[1]):
        c = centers[:, feature, None]
        low = lows[:, feature] * factor[feature]
        high = highs[:, feature] * factor[feature]
        high_sq += high * high
        np.subtract(low, c, out=below)  # > 0 where the centre is below the box
        np.subtract(c, high, out=above)  # > 0 where it is above
        np.maximum(below, above, out=above)
        np.maximum(above, 0.0, out=above)  # gap from the centre to the box
        above *= above
        lower += above
        np.subtract(high, c, out=above)
        np.negative(below, out=below)
        np.maximum(below, above, out=below)  # distance to the farther face
        below *= below
        upper += below
    reach = np.minimum.reduce(upper, axis=0)
    scale = float(np.max(np.einsum("ij,ij->i", centers, centers))) + high_sq
    reach += 1e-9 * (reach + scale)
    return (lower <= reach).T


def candidates(raw: np.ndarray, centers: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Indices (sorted) of the centres that can be the nearest one to some row of ``raw``
    (n, d): :func:`box_candidates` for the rows' box."""
    keep = box_candidates(raw.min(axis=0)[None], raw.max(axis=0)[None], centers, factor)
    return np.flatnonzero(keep[0])


def argmin_columns(columns: np.ndarray) -> np.ndarray:
    """Index of the minimum along the first axis of a (m, ...) array, the first one on ties.

    For few rows, a running minimum over them (each a long array) beats ``argmin(axis=0)``,
    which walks short strided columns.
    """
    best = columns[0].copy()
    index = np.zeros(columns.shape[1:], dtype=np.intp)
    better = np.empty(columns.shape[1:], dtype=bool)
    for j in range(1, len(columns)):
        np.less(columns[j], best, out=better)
        np.minimum(best, columns[j], out=best)
        np.copyto(index, j, where=better)
    return index


def _one_hot_sums(distances, weighted_part, local=None):
    """Per-candidate raw sums and weights (m, d + 1) of a sub-block's rows, as one product of
    the one-hot assignment (m, n) with ``weighted_part`` (n, d + 1).

    ``distances`` (m, n), each row's distance (up to a per-row constant) to each candidate,
    is overwritten with the one-hot matrix. Without ``local`` (each row's nearest
    candidate), a row's ones are where its distance equals its minimum: no argmin is needed.
    A row at the same distance from two candidates would then count twice, so the weights are
    checked against the rows' total, and None is returned on such a tie (the caller finds the
    first nearest one instead). For integer data every term is an integer, and the float64
    sums are exact whatever the order.

    ``np.dot``, not ``@``: measured here, two threads each running ``@`` on such a long
    product took as long as one thread running both; with ``np.dot`` they ran in parallel.
    """
    if local is None:
        np.equal(distances, np.minimum.reduce(distances, axis=0), out=distances)
    else:
        np.equal(np.arange(len(distances))[:, None], local, out=distances)
    partial = np.dot(distances, weighted_part)
    if local is None and partial[:, -1].sum() != weighted_part[:, -1].sum():
        return None
    return partial


def accumulate(
    rows1: np.ndarray,
    centers: np.ndarray,
    factor: np.ndarray,
    counts: np.ndarray,
    sums: np.ndarray,
    weighted: np.ndarray | None = None,
    block: int = SUB_BLOCK,
    keep: np.ndarray | None = None,
    want_labels: bool = True,
) -> np.ndarray | None:
    """Assign rows to their nearest centre and add their counts and raw sums in place.

    Per sub-block, the sums over a few candidate centres are one matrix product of the one-hot
    assignment with the rows, whose ones column gives the counts (see :func:`_one_hot_sums`);
    over many, one ``bincount`` per column. For integer data every term is an integer and the
    float64 sums are exact, whatever the order.

    Parameters
    ----------
    rows1 : ndarray of shape (n, d + 1)
        Raw rows followed by a column of ones.
    centers : ndarray of shape (k, d)
        Centres in feature space.
    factor : ndarray of shape (d,)
        Raw-to-feature scale of each feature.
    counts : ndarray of shape (k,)
        Per-cluster (weighted) counts, added to.
    sums : ndarray of shape (k, d)
        Per-cluster (weighted) raw sums, added to.
    weighted : ndarray of shape (n, d + 1), optional
        ``rows1`` times each row's multiplicity, for weighted points; ``rows1`` when omitted.
    block : int
        Rows per sub-block.
    keep : ndarray of int, optional
        The candidate centres of every row, when known.
    want_labels : bool
        Whether to return the labels (a pass that needs only the sums does not).

    Returns
    -------
    ndarray of shape (n,) or None
        The index of each row's nearest centre.
    """
    k = len(centers)
    unweighted = weighted is None
    weighted = rows1 if unweighted else weighted
    weights_matrix = distance_weights(centers, factor)
    labels = np.empty(len(rows1), dtype=np.intp) if want_labels else None
    for s in range(0, len(rows1), block):
        checkpoint()
        part, weighted_part = rows1[s : s + block], weighted[s : s + block]
        here = candidates(part[:, :-1], centers, factor) if keep is None else keep
        m = len(here)
        every = m == k
        target = slice(None) if every else here
        partial = local = None
        if m == 1:
            local = np.zeros(len(part), dtype=np.intp)
            partial = weighted_part.sum(axis=0)[None]
        elif m <= ONE_HOT_MAX:
            weights_t = np.ascontiguousarray(
                (weights_matrix if every else weights_matrix[:, here]).T
            )
            distances = np.dot(weights_t, part.T)
            if want_labels:
                local = argmin_columns(distances)
            partial = _one_hot_sums(distances, weighted_part, local)
            if partial is None:  # a tie: the first nearest candidate takes the row
                distances = np.dot(weights_t, part.T)
                local = argmin_columns(distances)
                partial = _one_hot_sums(distances, weighted_part, local)
        else:
            # many candidates: the nearest by argmin along each row, the sums by bincount
            local = (part @ (weights_matrix if every else weights_matrix[:, here])).argmin(axis=1)
            columns = weighted_part.T[:-1]
            for feature, column in enumerate(columns):
                sums[target, feature] += np.bincount(local, weights=column, minlength=m)
            if unweighted:  # the counts without weights: a faster count
                counts[target] += np.bincount(local, minlength=m)
            else:
                counts[target] += np.bincount(local, weights=weighted_part[:, -1], minlength=m)
        if partial is not None:
            sums[target] += partial[:, :-1]
            counts[target] += partial[:, -1]
        if want_labels:
            labels[s : s + block] = local if every else here[local]
    return labels


def nearest_sqdist(rows1: np.ndarray, centers: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Squared feature distance of each row to its nearest centre (clipped at 0)."""
    weights_matrix = distance_weights(centers, factor)
    raw = rows1[:, :-1]
    dist = np.empty(len(rows1))
    for s in range(0, len(rows1), SUB_BLOCK):
        checkpoint()
        part = raw[s : s + SUB_BLOCK] * factor
        d2 = (rows1[s : s + SUB_BLOCK] @ weights_matrix).min(axis=1)
        dist[s : s + SUB_BLOCK] = d2 + np.einsum("ij,ij->i", part, part)
    return np.maximum(dist, 0.0, out=dist)


def top_farthest(dist: np.ndarray, keys: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` largest ``dist``, ties broken by the smaller ``keys``, in order."""
    if len(dist) > m:
        cut = np.partition(dist, len(dist) - m)[len(dist) - m]
        candidates = np.flatnonzero(dist >= cut)
    else:
        candidates = np.arange(len(dist))
    order = np.lexsort((keys[candidates], -dist[candidates]))
    return candidates[order[:m]]


def with_ones(raw: np.ndarray) -> np.ndarray:
    """``raw`` (n, d) as float64 with a trailing column of ones: (n, d + 1), column-major."""
    columns = zeros((raw.shape[1] + 1, raw.shape[0]))
    columns[:-1] = raw.T
    columns[-1] = 1.0
    return columns.T


def add_owned(owner: np.ndarray, totals: np.ndarray, counts: np.ndarray, sums: np.ndarray):
    """Add the raw sums and counts ``totals`` (m, d + 1) of groups of points that go whole to
    one centre each (``owner``, (m,)) to ``counts`` (k,) and ``sums`` (k, d), in place."""
    k = len(counts)
    counts += np.bincount(owner, weights=totals[:, -1], minlength=k)
    for feature in range(sums.shape[1]):
        sums[:, feature] += np.bincount(owner, weights=totals[:, feature], minlength=k)


def ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The integers of the ranges ``starts[i] .. stops[i] - 1``, one range after another."""
    sizes = stops - starts
    shift = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
    return np.arange(len(shift)) + shift


@dataclass(frozen=True, eq=False)
class PointCells:
    """Points sorted into nested cells, for passes that give a cell whole to one centre.

    The points are sorted by an integer key such that the points sharing ``key >> shift``
    are close together (a Z-order code of colours: they lie in one cube). Each level groups
    them by ``key >> shift`` for one shift, from the coarsest; per cell it holds where its
    points start, their box (raw minimum and maximum) and their weighted raw sums and weight.
    A pass tests the cells of the coarsest level against the centres (see
    :func:`box_candidates`); a cell only one centre can be nearest to goes whole to it, from
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

    def split(self, centers, factor, counts, sums, want_labels: bool):
        """Give every cell that only one centre can be nearest to whole to it (see
        :func:`split_cells`); return the finest cells left open and, with ``want_labels``,
        every finest cell's centre (-1: left open)."""
        levels = (self.lows, self.highs, self.totals, self.parents)
        open_cells, owner_of, _ = split_cells(*levels, centers, factor, counts, sums, want_labels)
        return open_cells, owner_of


def split_cells(lows, highs, totals, parents, centers, factor, counts, sums, want_labels):
    """Nested cells of points, each cell given whole to a centre where only one can be nearest.

    Level by level from the coarsest (per level: the cells' boxes ``lows`` and ``highs``
    (cells, d), their raw sums and weight ``totals`` (cells, d + 1); per level but the
    first: ``parents``, each cell's cell one level up), the cells inside cells left open are
    tested against the centres (:func:`box_candidates`). A cell only one centre can be
    nearest to goes whole to it: its totals are added to ``counts`` and ``sums``.

    Returns
    -------
    open_cells : ndarray of int
        The finest cells left open, in order.
    owner_of : ndarray of int or None
        With ``want_labels``, each finest cell's centre (-1: left open).
    keep : ndarray of bool, shape (len(open_cells), k)
        The candidate centres of each open cell.
    """
    is_open = owner_of = keep = None
    for level, (low, high, total) in enumerate(zip(lows, highs, totals, strict=True)):
        if is_open is None:
            tested = np.arange(len(low))
        else:
            tested = np.flatnonzero(is_open[parents[level - 1]])
            if want_labels:
                owner_of = owner_of[parents[level - 1]]
        keep = box_candidates(low[tested], high[tested], centers, factor)
        single = np.count_nonzero(keep, axis=1) == 1
        whole = tested[single]
        owner = keep[single].argmax(axis=1)
        add_owned(owner, total[whole], counts, sums)
        if want_labels:
            if owner_of is None:
                owner_of = np.full(len(low), -1, dtype=np.intp)
            owner_of[whole] = owner
        is_open = np.zeros(len(low), dtype=bool)
        is_open[tested[~single]] = True
    return np.flatnonzero(is_open), owner_of, keep[~single]


@dataclass
class PointSource:
    """Weighted raw points held in memory (a sample, or the unique colours of an image).

    Parameters
    ----------
    raw : ndarray of shape (n, d)
    weights : ndarray of shape (n,) or None
    keys : ndarray of int, shape (n,), optional
        Non-decreasing keys that group close points: the points sharing ``keys >> shift``
        lie in a small box for each of ``shifts`` (Z-order codes of colours). With them, a
        pass with few clusters gives whole cells of points to one centre (:class:`PointCells`).
    shifts : tuple of int
        The shifts of the cells' levels, largest first.
    rows1 : ndarray of shape (n, d + 1), optional
        ``raw`` with a column of ones, column-major (as :func:`with_ones` makes it), when the
        caller has it: ``raw`` is then a view of it.
    """

    raw: np.ndarray
    weights: np.ndarray | None = None
    keys: np.ndarray | None = None
    shifts: tuple[int, ...] = ()
    rows1: np.ndarray | None = field(default=None, repr=False)
    _rows1: np.ndarray = field(init=False, repr=False)
    _weighted_rows: np.ndarray | None = field(init=False, repr=False, default=None)
    _cells: PointCells | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        self._rows1 = with_ones(self.raw) if self.rows1 is None else self.rows1

    @property
    def _weighted(self) -> np.ndarray | None:
        """The rows times each point's weight (None: unweighted), made when a pass over every
        point first needs them: passes over cells weigh the few points they read."""
        if self.weights is not None and self._weighted_rows is None:
            self._weighted_rows = zeros(self._rows1.shape[::-1]).T
            np.multiply(self._rows1, self.weights[:, None], out=self._weighted_rows)
        return self._weighted_rows

    def labels_and_stats(self, centers: np.ndarray, factor: np.ndarray):
        """Index of each point's nearest centre, per-cluster counts and raw sums, in one pass.

        One thread: the pass is many small steps on sub-blocks of a few thousand points, and
        measured here, splitting it between two threads made it slower (the steps hold the
        interpreter's lock between them).
        """
        return self._pass(centers, factor, want_labels=True)

    def _pass(self, centers, factor, want_labels):
        k, d = centers.shape
        counts, sums = np.zeros(k), np.zeros((k, d))
        with one_blas_thread():
            if self.keys is None or not self.shifts or k > CELL_MAX_CLUSTERS:
                weighted = self._rows1 if self.weights is None else self._weighted
                rows = (self._rows1, centers, factor, counts, sums, weighted, POINT_SUB_BLOCK)
                return accumulate(*rows, want_labels=want_labels), counts, sums
            if self._cells is None:
                self._cells = PointCells.build(self.keys, self.shifts, self._rows1.T, self.weights)
            cells = self._cells
            open_cells, owner_of = cells.split(centers, factor, counts, sums, want_labels)
            finest = cells.starts[-1]
            stops = np.append(finest[1:], len(self.raw))
            read = ranges(finest[open_cells], stops[open_cells])
            rows1 = np.take(self._rows1.T, read, axis=1).T
            # the same products as in _weighted, from fewer reads
            weighted = rows1 if self.weights is None else rows1 * self.weights[read, None]
            every = np.arange(k)  # the open cells' points, with every centre a candidate
            nearest = accumulate(
                rows1, centers, factor, counts, sums, weighted, SUB_BLOCK, every, want_labels
            )
        if not want_labels:
            return None, counts, sums
        labels = np.repeat(owner_of, stops - finest)
        labels[read] = nearest
        return labels, counts, sums

    def stats(self, centers: np.ndarray, factor: np.ndarray):
        return self._pass(centers, factor, want_labels=False)[1:]

    def sq_total(self, factor: np.ndarray) -> float:
        rows = self._rows1.T[:-1]  # each feature's column, contiguous
        w = self.weights
        per_feature = np.array([np.dot(r if w is None else r * w, r) for r in rows])
        return float(per_feature @ (factor * factor))

    def farthest(self, centers: np.ndarray, factor: np.ndarray, m: int):
        dist = nearest_sqdist(self._rows1, centers, factor)
        top = top_farthest(dist, np.arange(len(dist)), m)
        return dist[top], self.raw[top].astype(np.float64)


def kmeans_plusplus(
    x: np.ndarray, weights: np.ndarray, n_clusters: int, rng: np.random.Generator, on_step=None
) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as in scikit-learn).

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Points in feature space.
    weights : ndarray of shape (n,)
        Multiplicity of each point.
    n_clusters : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_clusters, d)

    Raises
    ------
    TooFewDistinctPoints
        When every remaining point coincides with a chosen centre before ``n_clusters`` are found.
    """
    n = len(x)
    n_trials = 2 + int(np.log(n_clusters))
    norms = np.einsum("ij,ij->i", x, x)

    def sqdist(rows):  # (len(rows), n) squared distances from x[rows] to every point
        d2 = norms[rows, None] - 2.0 * (x[rows] @ x.T) + norms[None, :]
        return np.maximum(d2, 0.0, out=d2)

    centers = np.empty((n_clusters, x.shape[1]))
    first = rng.choice(n, p=weights / weights.sum())
    centers[0] = x[first]
    closest = sqdist(np.array([first]))[0]
    potential = float(weights @ closest)
    for c in range(1, n_clusters):
        if on_step is not None:
            on_step(c)
        checkpoint()
        if potential <= 0.0:
            raise TooFewDistinctPoints(c, n_clusters)
        cumulative = np.cumsum(weights * closest)
        picks = np.searchsorted(cumulative, rng.random(n_trials) * cumulative[-1])
        picks = np.minimum(picks, n - 1)
        trial = sqdist(picks)
        np.minimum(closest, trial, out=trial)
        potentials = trial @ weights
        best = int(np.argmin(potentials))
        closest, potential = trial[best], float(potentials[best])
        centers[c] = x[picks[best]]
    return centers


def random_init(
    x: np.ndarray, weights: np.ndarray, n_clusters: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_clusters`` distinct points of ``x`` drawn with probability proportional to weight."""
    if len(x) < n_clusters:
        raise TooFewDistinctPoints(len(x), n_clusters)
    picks = rng.choice(len(x), size=n_clusters, replace=False, p=weights / weights.sum())
    return x[np.sort(picks)].astype(np.float64)


@dataclass
class Lloyd:
    """Lloyd's algorithm over a source of points, one pass over the data per round.

    A round assigns every point to its nearest centre, records the inertia of that assignment
    (the weighted sum of squared distances to the centres used), and moves each centre to the
    mean of its points. It stops after ``max_iter`` rounds, when the centres no longer move
    (strict convergence: the assignment is stable), or when a round lowers the inertia by less
    than ``tol`` times the previous round's inertia.

    Empty clusters are relocated on purpose: each takes the position of one of the points
    farthest from their nearest centre. When no point is left at a positive distance, the
    points have fewer distinct values than clusters: with ``check_distinct`` that raises
    :class:`TooFewDistinctPoints`, otherwise the cluster stays empty.
    """

    source: object
    centers: np.ndarray
    factor: np.ndarray
    max_iter: int
    tol: float
    inertia_history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    strict: bool = False
    check_distinct: bool = False
    _sq_total: float | None = None

    def inertia(self, centers, counts, sums) -> float:
        """Inertia of an assignment from its counts and raw sums (no second pass)."""
        if self._sq_total is None:
            self._sq_total = self.source.sq_total(self.factor)
        feature_sums = sums * self.factor
        cross = np.einsum("ij,ij->", centers, feature_sums)
        own = counts @ np.einsum("ij,ij->i", centers, centers)
        return max(float(self._sq_total - 2.0 * cross + own), 0.0)

    def rounds(self):
        """Run the rounds, yielding after each one; ``self`` holds the state."""
        while self.n_iter < self.max_iter:
            checkpoint()
            counts, sums = self.source.stats(self.centers, self.factor)
            inertia = self.inertia(self.centers, counts, sums)
            self.inertia_history.append(inertia)
            self.n_iter += 1
            new = self.update(counts, sums)
            self.strict = bool(np.array_equal(new, self.centers))
            self.centers = new
            previous = self.inertia_history[-2] if len(self.inertia_history) > 1 else None
            small_gain = previous is not None and previous - inertia < self.tol * previous
            self.converged = self.strict or small_gain
            yield self
            if self.converged:
                return

    def update(self, counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """Means of the clusters, with empty clusters relocated to far points."""
        new = self.centers.copy()
        full = counts > 0
        new[full] = self.factor * (sums[full] / counts[full, None])
        empty = np.flatnonzero(~full)
        if len(empty):
            dist, raw = self.source.farthest(self.centers, self.factor, len(empty))
            usable = dist > 0
            if self.check_distinct and not usable.any():
                # every point lies on a centre: each non-empty cluster is one distinct point
                raise TooFewDistinctPoints(int(full.sum()), len(self.centers))
            new[empty[: usable.sum()]] = self.factor * raw[usable]
        return new
