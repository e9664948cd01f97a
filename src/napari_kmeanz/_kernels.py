"""The maths of an assignment pass, on rows of points held in memory.

Everything here assumes valid input (the public functions check it) and works on *raw rows*
(see ``_features``): a point's raw features followed by a ones column, ``(n, d + 1)``, and a
per-feature ``factor`` that turns a raw row ``r`` into its feature vector ``x = factor * r``.
Per-cluster sums are taken over raw rows, so for integer images every sum is an exact float64
integer, whatever the order of the terms; centres are ``factor * sums / counts``.

The assignment of rows to their nearest centre is written once: :func:`nearest_sums`, a kernel
compiled by numba, for a sub-block of rows or a batch of tiles (in ``_tiles``), each against
its own candidate centres (the others are pruned by ``_prune``). It holds no distance matrix
and runs without the interpreter's lock, so dask's threads run it side by side.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _watch
from ._compute import zeros
from ._jit import kernel
from ._prune import box_candidate_lists
from ._watch import checkpoint

# Rows per sub-block of a pass over points in memory (by default): one box test finds the
# sub-block's candidates, and threads share sub-blocks.
SUB_BLOCK = 1 << 15
# Points per group of the kernel, for points held in memory: a group's rows (24 KiB in 5-D)
# and distances stay in the fastest caches. Measured against 1000 candidates: 0.62-0.67 us a
# point in groups of 512, 0.86-0.90 in groups of 1024, 1.04-1.07 in groups of 4096.
GROUP_POINTS = 512
# Distances computed at a time for each row's nearest of many centres (nearest_sqdist): 512
# KiB, in cache. Measured on a pass over a 65536-point sample of a 2048x3072 photo, 5-D,
# k=1000: 47-63 ms against 148-165 ms for a whole sub-block's 4096 x 1000 distances at once
# (32 MiB); 2^15 and 2^17 about the same, 2^18 slower again.
MANY_DISTANCES = 1 << 16


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


@kernel(
    *(
        f"({rows}[:, :, ::1], {rows}[:, :, ::1], float64[:, ::1], intp[::1], intp[::1],"
        " intp[::1], float64[:, ::1], intp[:, ::1])"
        for rows in ("float64", "float32")  # (float32: rows it holds exactly, see TileRows)
    )
)
def _nearest_sums(rows, summed, weights, ids, firsts, counts, totals, labels):  # pragma: no cover
    """The compiled kernel of :func:`nearest_sums` (``_jit``: coverage cannot see inside).

    Group ``g``'s candidates are ``ids[firsts[g]:firsts[g] + counts[g]]``; a point's distance to
    candidate ``c`` is ``sum_f rows[g, f, p] * weights[f, c]``, the features in order, so
    that a point's distances are the same numbers in every pass that reads it. Candidate by
    candidate over a group's points (contiguous: the loop runs on vector registers), a
    running minimum keeps the first nearest on ties.
    """
    n_groups, width, n = rows.shape
    best = np.empty(n, dtype=np.intp)
    least = np.empty(n)
    distance = np.empty(n)
    for g in range(n_groups):
        first, stop = firsts[g], firsts[g] + counts[g]
        for c in range(first, stop):
            centre = ids[c]
            w = weights[0, centre]
            for p in range(n):
                distance[p] = rows[g, 0, p] * w
            for f in range(1, width):
                w = weights[f, centre]
                for p in range(n):
                    distance[p] += rows[g, f, p] * w
            if c == first:
                for p in range(n):
                    least[p] = distance[p]
                    best[p] = centre
            else:
                for p in range(n):
                    if distance[p] < least[p]:
                        least[p] = distance[p]
                        best[p] = centre
        if stop == first:
            continue
        for p in range(n):
            centre = best[p]
            for f in range(width):
                totals[centre, f] += summed[g, f, p]
        if labels.shape[0]:
            for p in range(n):
                labels[g, p] = best[p]


_NO_LABELS = np.empty((0, 0), dtype=np.intp)


def nearest_sums(rows, summed, weights, ids, firsts, counts, totals, labels=None) -> None:
    """Assign points to their nearest candidate centre and add their sums, group by group.

    This is the one assignment kernel: a sub-block of points held in memory is one group, a
    batch of a chunk's tiles (``_tiles``) one group per tile.

    Parameters
    ----------
    rows : ndarray of shape (groups, d + 1, n), C-contiguous float64 (or float32)
        Each group's raw rows, feature by feature, then the ones row (0 for a point that
        is not clustered: it then weighs nothing). # IN
    summed : ndarray like ``rows``
        What is summed: ``rows``, or the rows times each point's weight. # IN
    weights : ndarray of shape (d + 1, k), C-contiguous
        The centres' distance weights (:func:`distance_weights`). # IN
    ids, firsts, counts : ndarray of intp
        Each group's candidate centres, increasing: ``ids[firsts[g]:firsts[g] + counts[g]]``
        (groups may share them). # IN
    totals : ndarray of shape (k, d + 1), C-contiguous
        Per-centre sums of ``summed``, added to, point by point in order. # OUT
    labels : ndarray of shape (groups, n), intp, optional
        Each point's nearest centre (the first on ties). # OUT
    """
    labels = _NO_LABELS if labels is None else labels
    _nearest_sums(rows, summed, weights, ids, firsts, counts, totals, labels)


def accumulate(
    rows: np.ndarray,
    centers: np.ndarray,
    factor: np.ndarray,
    counts: np.ndarray,
    sums: np.ndarray,
    weighted: np.ndarray | None = None,
    block: int | None = None,
    candidates_of: np.ndarray | None = None,
    want_labels: bool = True,
    threads: int = 1,
    prepared: list | None = None,
) -> np.ndarray | None:
    """Assign rows to their nearest centre and add their counts and raw sums in place.

    Sub-block by sub-block, in groups of GROUP_POINTS rows, only the centres that can be
    nearest to some row of a group's box are weighed (:func:`_prune.box_lists`), by
    :func:`nearest_sums`: rows in an order that keeps close rows together (Z-ordered colours,
    :meth:`_points.PointSource._put_in_order`) leave each group few.

    Parameters
    ----------
    rows : ndarray of shape (n, d + 1)
        Raw rows followed by a column of ones. # IN
    centers : ndarray of shape (k, d)
        Centres in feature space. # IN
    factor : ndarray of shape (d,)
        Raw-to-feature scale of each feature. # IN
    counts : ndarray of shape (k,)
        Per-cluster (weighted) counts, added to. # OUT
    sums : ndarray of shape (k, d)
        Per-cluster (weighted) raw sums, added to. # OUT
    weighted : ndarray of shape (n, d + 1), optional
        ``rows`` times each row's multiplicity, for weighted points; ``rows`` when omitted.
    block : int, optional
        Rows per sub-block (default ``SUB_BLOCK``).
    candidates_of : ndarray of int, optional
        The candidate centres of every row, when known (default: found per sub-block).
    want_labels : bool
        Whether to return the labels (a pass that needs only the sums does not).
    threads : int
        Threads the sub-blocks are shared between (the sums come out the same).
    prepared : list, optional
        The sub-blocks as :func:`sub_blocks` lays them out for these rows and ``block``, kept
        by a caller that passes over the same rows again (else laid out in each pass).

    Returns
    -------
    ndarray of shape (n,) or None
        The index of each row's nearest centre.
    """
    k, width = len(centers), rows.shape[1]
    weights_matrix = distance_weights(centers, factor)
    labels = np.empty(len(rows), dtype=np.intp) if want_labels else None
    block = SUB_BLOCK if block is None else block

    def one(s):
        checkpoint()
        boxed = candidates_of is None
        if prepared is None:
            own, summed, lows, highs = sub_block(rows, weighted, s, block, boxed)
        else:
            own, summed, lows, highs = prepared[s // block]
        n_groups = len(own)
        if boxed:  # each group's own, from its box
            here, firsts, counts = box_candidate_lists(lows, highs, centers, factor).kernel_arrays
        else:
            here = candidates_of.astype(np.intp, copy=False)
            firsts, counts = np.zeros(n_groups, np.intp), np.full(n_groups, len(here), np.intp)
        totals = np.zeros((k, width))
        out = None if labels is None else np.empty((n_groups, GROUP_POINTS), dtype=np.intp)
        nearest_sums(own, summed, weights_matrix, here, firsts, counts, totals, out)
        if out is not None:
            labels[s : s + block] = out.ravel()[: min(block, len(rows) - s)]
        return totals

    starts = range(0, len(rows), block)
    # the sums are added in the sub-blocks' order, whichever thread found them: the same
    # floats on any number of threads
    for totals in in_threads(one, starts, threads):
        sums += totals[:, :-1]
        counts += totals[:, -1]
    return labels


def sub_blocks(rows: np.ndarray, weighted: np.ndarray | None, block: int) -> list:
    """Every sub-block of ``block`` rows laid out as :func:`sub_block` does, in order."""
    return [sub_block(rows, weighted, s, block) for s in range(0, len(rows), block)]


def sub_block(rows, weighted, start: int, block: int, boxed: bool = True) -> tuple:
    """The sub-block of ``block`` rows from ``start`` as a pass weighs it: its rows and what
    it sums in groups (:func:`grouped`), and each group's box in raw units (lows, highs;
    None without ``boxed``)."""
    part = rows[start : start + block]
    own = grouped(part)
    summed = own if weighted is None else grouped(weighted[start : start + block])
    if not boxed:
        return own, summed, None, None
    raw, starts = part[:, :-1], np.arange(0, len(part), GROUP_POINTS)
    return own, summed, np.minimum.reduceat(raw, starts), np.maximum.reduceat(raw, starts)


def grouped(part: np.ndarray) -> np.ndarray:
    """Rows (n, d + 1) as :func:`nearest_sums` takes them: groups of GROUP_POINTS points,
    (groups, d + 1, GROUP_POINTS), the last one padded with zero rows (they weigh nothing)."""
    n, width = part.shape
    n_groups = -(-n // GROUP_POINTS)
    out = np.zeros((n_groups, width, GROUP_POINTS))
    for g in range(n_groups):
        chunk = part[g * GROUP_POINTS : (g + 1) * GROUP_POINTS]
        out[g, :, : len(chunk)] = chunk.T
    return out


def in_threads(task, items, threads: int):
    """``map(task, items)``, on ``threads`` threads when more than one (each task working
    for this thread's watch), the results in order."""
    if threads <= 1 or len(items) <= 1:
        return map(task, items)
    return _pool(threads).map(_watch.bind(task), items)


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="napari-kmeanz")


def nearest_sqdist(rows: np.ndarray, centers: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Squared feature distance of each row to its nearest centre (clipped at 0)."""
    weights_matrix = distance_weights(centers, factor)
    raw = rows[:, :-1]
    dist = np.empty(len(rows))
    step = min(SUB_BLOCK, max(256, MANY_DISTANCES // len(centers)))  # distances in cache
    for s in range(0, len(rows), step):
        checkpoint()
        part = raw[s : s + step] * factor
        d2 = (rows[s : s + step] @ weights_matrix).min(axis=1)
        dist[s : s + step] = d2 + np.einsum("ij,ij->i", part, part)
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
