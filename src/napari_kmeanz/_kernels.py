"""The maths of an assignment pass, on rows of points held in memory.

Everything here assumes valid input (the public functions check it) and works on *raw rows*
(see ``_features``): a point's raw features followed by a ones column, ``(n, d + 1)``, and a
per-feature ``factor`` that turns a raw row ``r`` into its feature vector ``x = factor * r``.
Per-cluster sums are taken over raw rows, so for integer images every sum is an exact float64
integer, whatever the order of the terms; centres are ``factor * sums / counts``.

The assignment of rows to their nearest centre is written once: :func:`nearest_sums`, for a
sub-block of rows (2-D) or a batch of tiles (3-D, in ``_tiles``), each against its own
candidate centres (the others are pruned by ``_prune``).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _watch
from ._compute import zeros
from ._prune import candidates
from ._watch import checkpoint

# Rows per sub-block in the kernels: the (rows x k) distance matrix of a sub-block stays in cache.
SUB_BLOCK = 1 << 15
# Up to this many candidate centres, a sub-block's per-cluster sums are a one-hot product;
# above, one ``bincount`` per feature. Measured on 32768 rows of 5 features, one thread:
# 0.5 ms against 2.0 ms for 8 candidates, 1.0 against 2.3 for 16, 2.6 against 2.7 for 32,
# 5.5 against 4.8 for 50. The product also runs without the interpreter's lock, where
# ``bincount`` holds it, so two dask threads gain more from it. The same bound picks the
# path of a batch of tiles (``_tiles``).
ONE_HOT_MAX = 32
# Distances computed at a time for each row's nearest of many candidates (nearest_many,
# nearest_sqdist): 512 KiB, in cache. Measured on a pass over a 65536-point sample of a
# 2048x3072 photo, 5-D, k=1000: 47-63 ms against 148-165 ms for a whole sub-block's 4096 x
# 1000 distances at once (32 MiB); 2^15 and 2^17 about the same, 2^18 slower again.
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


# From this many candidates, ``argmin`` finds the nearest faster than a running minimum.
# Measured on 2^17 distances (tiles of 256 pixels): 0.84 against 0.84 ms for 8, 0.66
# against 0.78 for 16, 0.30 against 1.03 for 128, 0.27 against 1.74 for 512 (where the
# labelling pass of a 2048x3072 photo, 5-D, k=1000, took 3x a pass without labels).
ARGMIN_FROM = 16


def nearest(distances: np.ndarray) -> np.ndarray:
    """Each point's first nearest candidate, from ``distances`` (..., m candidates, n points)."""
    if distances.shape[-2] >= ARGMIN_FROM:
        return np.argmin(distances, axis=-2)
    return argmin_columns(np.moveaxis(distances, -2, 0))


def one_hot_sums(distances: np.ndarray, summed: np.ndarray, local=None):
    """Per-candidate sums (..., m, d + 1) of ``summed`` (..., n, d + 1), the rows (or the
    weighted rows) of the points, by the one-hot product of their assignment.

    ``distances`` (..., m, n), each point's distance (up to a per-point constant) to each
    candidate, is overwritten with the one-hot matrix. Without ``local`` (each point's nearest
    candidate), a point's ones are where its distance equals its minimum: no argmin is
    needed. A point at the same distance from two candidates would then count twice, so the
    weights are checked against the points' total, and None is returned on such a tie.

    ``np.dot`` for one sub-block, not ``@``: measured here, two threads each running ``@`` on
    such a long product took as long as one thread running both; with ``np.dot`` they ran in
    parallel.
    """
    if local is None:
        np.equal(distances, distances.min(axis=-2, keepdims=True), out=distances)
    else:
        np.equal(np.arange(distances.shape[-2])[:, None], local[..., None, :], out=distances)
    partial = (np.dot if distances.ndim == 2 else np.matmul)(distances, summed)
    if local is None and not np.array_equal(
        partial[..., -1].sum(axis=-1), summed[..., -1].sum(axis=-1)
    ):
        return None
    return partial


def bincount_sums(local: np.ndarray, summed: np.ndarray, m: int) -> np.ndarray:
    """Per-candidate sums (..., m, d + 1) of ``summed`` (..., n, d + 1) by each point's
    candidate ``local`` (..., n): one ``bincount`` per column, the points in order."""
    lead = local.shape[:-1]
    groups = int(np.prod(lead))  # 1 for a sub-block, the tiles of a batch
    ids = (local + (np.arange(groups) * m).reshape(*lead, 1)).ravel()
    columns = summed.reshape(-1, summed.shape[-1]).T
    partial = [np.bincount(ids, weights=c, minlength=groups * m) for c in columns]
    return np.stack(partial, axis=-1).reshape(*lead, m, summed.shape[-1])


def nearest_sums_many(rows: np.ndarray, weights: np.ndarray):
    """:func:`nearest_sums` for many candidates: per-candidate sums (..., m, d + 1) of
    ``rows`` (..., n, d + 1) and each row's nearest candidate (the first on ties), by the
    distance ``weights`` (..., d + 1, m) of the candidates. The distances are laid out
    (..., n, m) for the nearest, and the sums are bincounts: for a tile of 256 pixels and
    1024 candidates, the one-hot product took 4x as long."""
    local = np.matmul(rows, weights).argmin(axis=-1)
    return bincount_sums(local, rows, weights.shape[-1]), local


def nearest_sums(distances_of, summed: np.ndarray, want_labels: bool):
    """Per-candidate sums of points and, with ``want_labels``, each point's nearest candidate.

    ``distances_of()`` computes the distances (..., m, n) (called again on a tie, as
    :func:`one_hot_sums` overwrites them); ``summed`` (..., n, d + 1) is what is summed. On a
    tie the first nearest candidate takes the point, as ``argmin`` would.
    """
    distances = distances_of()
    local = nearest(distances) if want_labels else None
    partial = one_hot_sums(distances, summed, local)
    if partial is None:
        distances = distances_of()
        local = nearest(distances)
        partial = one_hot_sums(distances, summed, local)
    return partial, local


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
) -> np.ndarray | None:
    """Assign rows to their nearest centre and add their counts and raw sums in place.

    Sub-block by sub-block, only the centres that can be nearest to some row of the
    sub-block's box are weighed (:func:`_prune.candidates`); over a few of them the sums are
    :func:`nearest_sums`, over many one ``bincount`` per column.

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

    Returns
    -------
    ndarray of shape (n,) or None
        The index of each row's nearest centre.
    """
    weights_matrix = distance_weights(centers, factor)
    labels = np.empty(len(rows), dtype=np.intp) if want_labels else None
    block = SUB_BLOCK if block is None else block

    def one(s):
        checkpoint()
        part = rows[s : s + block]
        weighted_part = None if weighted is None else weighted[s : s + block]
        here = candidates_of
        if here is None:
            here = candidates(part[:, :-1], centers, factor)
        all_centres = len(here) == len(centers)
        matrix = weights_matrix if all_centres else weights_matrix[:, here]
        partial, local = _sub_block(part, weighted_part, matrix, want_labels)
        return (slice(None) if all_centres else here), partial, local

    starts = range(0, len(rows), block)
    # the sums are added in the sub-blocks' order, whichever thread found them: the same
    # floats on any number of threads
    for s, (target, partial, local) in zip(starts, in_threads(one, starts, threads), strict=True):
        sums[target] += partial[:, :-1]
        counts[target] += partial[:, -1]
        if want_labels:
            labels[s : s + block] = local if isinstance(target, slice) else target[local]
    return labels


def in_threads(task, items, threads: int):
    """``map(task, items)``, on ``threads`` threads when more than one (each task working
    for this thread's watch), the results in order."""
    if threads <= 1 or len(items) <= 1:
        return map(task, items)
    return _pool(threads).map(_watch.bind(task), items)


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="napari-kmeanz")


def _sub_block(part, weighted_part, matrix, want_labels):
    """One sub-block of :func:`accumulate` against its candidates' distance ``matrix``
    (d + 1, m): the per-candidate sums (m, d + 1) of the (weighted) rows and each row's
    nearest candidate (None for a one-hot product without ``want_labels``)."""
    weighted_part = part if weighted_part is None else weighted_part
    m = matrix.shape[1]
    if m == 1:
        return weighted_part.sum(axis=0)[None], np.zeros(len(part), dtype=np.intp)
    if m <= ONE_HOT_MAX:
        weights_t = np.ascontiguousarray(matrix.T)
        distances_of = functools.partial(np.dot, weights_t, part.T)
        return nearest_sums(distances_of, weighted_part, want_labels)
    # many candidates: the nearest by argmin along each row, the sums by bincount
    local = nearest_many(part, matrix)
    return bincount_sums(local, weighted_part, m), local


def nearest_many(part: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Each row's nearest of many candidates: ``(part @ matrix).argmin(axis=1)``, a few rows
    at a time, so that their distances stay in cache (MANY_DISTANCES)."""
    n, m = len(part), matrix.shape[1]
    step = max(1, MANY_DISTANCES // m)
    if n <= step:
        return (part @ matrix).argmin(axis=1)
    local = np.empty(n, dtype=np.intp)
    buffer = np.empty((step, m))
    for s in range(0, n, step):
        rows = part[s : s + step]
        distances = np.matmul(rows, matrix, out=buffer[: len(rows)])
        distances.argmin(axis=1, out=local[s : s + len(rows)])
    return local


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
