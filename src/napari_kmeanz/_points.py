"""Weighted points held in memory: a sample of pixels, or the distinct colours of an image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _kernels
from ._compute import one_blas_thread, worker_threads, zeros
from ._kernels import accumulate, nearest_sqdist, top_farthest, with_ones
from ._prune import PointCells, split_cells

# Points per sub-block for points held in memory (sorted in Z-order, a small block is a
# compact cube of colour space, where few centres are candidates).
POINT_SUB_BLOCK = 1 << 12
# Up to this many clusters, points held in nested cells are pruned cell by cell (see
# PointCells). Measured on the 1.1 M colours of a 4096x4096 photo: a round over them took
# 12 ms against 30 ms for k=16, and 56 ms against 41 ms for k=50, where fewer cells go whole
# to one centre and each test weighs every centre.
CELL_MAX_CLUSTERS = 24
# From this many clusters, a pass over every point shares its sub-blocks between dask's
# threads (:func:`_kernels.in_threads`), the sums the same. Measured on a 65536-point sample of
# a 2048x3072 photo, 5-D, 2 cores, with the compiled kernel (median of 15, two runs): one
# thread against two 6.7-8.7 against 4.4-5.7 ms for k=100, 17.8-23.4 against 10.4-12.9 for
# k=300, 50-57 against 30-31 for k=1000; no gain for k=50 (3.9 against 3.9-4.2 ms) and
# below, where a sub-block is too little work for a thread to pick up.
THREADS_FROM_CLUSTERS = 100
# From this many clusters, points with no keys of their own (a sample) are put in Z-order once
# (:meth:`PointSource._put_in_order`), so that a pass's groups of points have small boxes: on a
# 65536-point sample of a 2048x3072 photo, 5-D, a pass took 12.5-16.9 against 36-42 ms at
# k=1000, 6.3-10.4 against 16.1-17.9 at k=400, for 6-10 ms once; at k=50 the once cost more
# than the few passes of a short run saved (the 512x512 5-D k=50 run's seeding 0.067-0.096
# against 0.058-0.092 s).
ORDER_FROM_CLUSTERS = 200
# Up to this many points, a pass over every point keeps its sub-blocks as the kernel takes
# them (rows in groups, and the groups' boxes) for the passes after it: at most 12 MiB in 5-D,
# twice that weighted. A sample's rounds, seeding's included, stop laying them out again in
# each pass (see PointSource._sub_blocks).
PREPARED_POINTS = 1 << 18


@dataclass
class PointSource:
    """Weighted raw points held in memory (a sample, or the distinct colours of an image): a
    :class:`_lloyd.Source`.

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
    rows : ndarray of shape (n, d + 1), optional
        ``raw`` with a column of ones, column-major (as :func:`with_ones` makes it), when the
        caller has it: ``raw`` is then a view of it.
    """

    raw: np.ndarray
    weights: np.ndarray | None = None
    keys: np.ndarray | None = None
    shifts: tuple[int, ...] = ()
    rows: np.ndarray | None = field(default=None, repr=False)
    _weighted_rows: np.ndarray | None = field(init=False, repr=False, default=None)
    _cells: PointCells | None = field(init=False, repr=False, default=None)
    _order: np.ndarray | None = field(init=False, repr=False, default=None)
    _prepared: list | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        if self.rows is None:
            self.rows = with_ones(self.raw)

    @property
    def _weighted(self) -> np.ndarray | None:
        """The rows times each point's weight (None: unweighted), made when a pass over every
        point first needs them: passes over cells weigh the few points they read."""
        if self.weights is not None and self._weighted_rows is None:
            self._weighted_rows = zeros(self.rows.shape[::-1]).T
            np.multiply(self.rows, self.weights[:, None], out=self._weighted_rows)
        return self._weighted_rows

    def nearest_and_stats(self, centers: np.ndarray, factor: np.ndarray):
        """Index (0-based) of each point's nearest centre, and the per-cluster counts and raw
        sums, in one pass.

        One thread below THREADS_FROM_CLUSTERS clusters: a sub-block of a few thousand
        points is then too little work to share between threads.
        """
        return self._pass(centers, factor, want_labels=True)

    def stats(self, centers: np.ndarray, factor: np.ndarray):
        return self._pass(centers, factor, want_labels=False)[1:]

    def _pass(self, centers, factor, want_labels):
        k, d = centers.shape
        counts, sums = np.zeros(k), np.zeros((k, d))
        with one_blas_thread():
            if self.keys is None or not self.shifts or k > CELL_MAX_CLUSTERS:
                if self.keys is None and k >= ORDER_FROM_CLUSTERS:
                    self._put_in_order()
                # (unweighted: None, what each group sums is its rows, laid out once)
                into = (self.rows, centers, factor, counts, sums, self._weighted, POINT_SUB_BLOCK)
                threads = worker_threads() if k >= THREADS_FROM_CLUSTERS else 1
                found = accumulate(*into, want_labels=want_labels, threads=threads,
                                   prepared=self._sub_blocks())  # fmt: skip
                labels = found
                if found is not None and self._order is not None:  # (in the points' order)
                    labels = np.empty_like(found)
                    labels[self._order] = found
                return labels, counts, sums
            nearest = self._cells_pass(centers, factor, counts, sums, want_labels)
        return nearest, counts, sums

    def _sub_blocks(self) -> list | None:
        """The sub-blocks of a pass over every point, laid out once (up to PREPARED_POINTS
        points): 65536 points of a 2048x3072 photo, 5-D, a pass 2.66 against 1.73-1.78 ms at
        k=16, 4.70 against 3.55-3.97 at k=50 (median of 15, two runs each)."""
        if self._prepared is None and len(self.rows) <= PREPARED_POINTS:
            self._prepared = _kernels.sub_blocks(self.rows, self._weighted, POINT_SUB_BLOCK)
        return self._prepared

    def _put_in_order(self) -> None:
        """Hold the points along a Z-order curve of their raw features (once), so that a
        pass's groups of points have small boxes and few candidate centres: on a 65536-point
        sample of a 2048x3072 photo, 5-D, against 1000 centres, a group of 512 points kept
        36% of them (all as drawn). The points are moved, not copied (``_order`` maps them
        back): what a pass returns per point is in the points' own order."""
        if self._order is not None:
            return
        order = np.argsort(z_order_keys(self.rows.T[:-1]), kind="stable")
        self.rows = np.take(self.rows.T, order, axis=1).T  # (the old rows let go)
        self.raw = self.rows[:, :-1]
        if self.weights is not None:
            self.weights, self._weighted_rows = self.weights[order], None
        self._order, self._prepared = order, None

    def _cells_pass(self, centers, factor, counts, sums, want_labels):
        """A pass through :class:`PointCells`: cells only one centre can be nearest to go
        whole to it; the points of the cells left open are read, with every centre a
        candidate. Returns each point's nearest centre (None without ``want_labels``)."""
        if self._cells is None:
            self._cells = PointCells.build(self.keys, self.shifts, self.rows.T, self.weights)
        cells = self._cells
        levels = (cells.lows, cells.highs, cells.totals, cells.parents)
        open_cells, owner_of, _ = split_cells(*levels, centers, factor, counts, sums, want_labels)
        finest = cells.starts[-1]
        stops = np.append(finest[1:], len(self.raw))
        read = ranges(finest[open_cells], stops[open_cells])
        rows = np.take(self.rows.T, read, axis=1).T
        # the same products as in _weighted, from fewer reads
        weighted = None if self.weights is None else rows * self.weights[read, None]
        all_centres = np.arange(len(centers))
        nearest = accumulate(
            rows,
            centers,
            factor,
            counts,
            sums,
            weighted,
            _kernels.SUB_BLOCK,
            all_centres,
            want_labels,
        )
        if not want_labels:
            return None
        labels = np.repeat(owner_of, stops - finest)
        labels[read] = nearest
        return labels

    def drop(self) -> None:
        """Let go of the points' memory (rows, weights, keys, cells) when no pass will read
        them again; :attr:`dropped` says so after."""
        self.raw = self.rows = self.weights = self.keys = None
        self._weighted_rows = self._cells = self._order = self._prepared = None

    @property
    def dropped(self) -> bool:
        return self.rows is None

    def sq_total(self, factor: np.ndarray) -> float:
        columns = self.rows.T[:-1]  # each feature's column, contiguous
        w = self.weights
        per_feature = np.array([np.dot(r if w is None else r * w, r) for r in columns])
        return float(per_feature @ (factor * factor))

    def farthest(self, centers: np.ndarray, factor: np.ndarray, m: int):
        dist = nearest_sqdist(self.rows, centers, factor)
        positions = np.arange(len(dist)) if self._order is None else self._order
        top = top_farthest(dist, positions, m)  # (ties: the first in the points' own order)
        return dist[top], self.raw[top].astype(np.float64)


def z_order_keys(columns: np.ndarray) -> np.ndarray:
    """Keys (n,) that order points, given feature by feature (d, n), along a Z-order curve:
    each feature cut into ``2**bits`` steps over its range (at most 12 bits, 63 in all),
    their bits interleaved through a table of each step's bits spread ``d`` apart."""
    d, n = columns.shape
    bits = max(1, min(12, 63 // max(d, 1)))
    values = np.arange(1 << bits, dtype=np.int64)
    spread = np.zeros(1 << bits, dtype=np.int64)
    for bit in range(bits):
        spread |= ((values >> bit) & 1) << (bit * d)
    keys = np.zeros(n, dtype=np.int64)
    for f, column in enumerate(columns):
        low, high = column.min(), column.max()
        scale = ((1 << bits) - 1) / (high - low) if high > low else 0.0
        keys |= spread[((column - low) * scale).astype(np.intp)] << f
    return keys


def ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The integers of the ranges ``starts[i] .. stops[i] - 1``, one range after another."""
    sizes = stops - starts
    shift = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
    return np.arange(len(shift)) + shift
