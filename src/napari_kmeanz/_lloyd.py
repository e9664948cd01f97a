"""Lloyd's algorithm over any source of points, and the contract a source keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ._watch import checkpoint


class Source(Protocol):
    """What Lloyd's rounds need of the points, wherever they are.

    :class:`_points.PointSource` holds points in memory (a sample, the distinct colours);
    :class:`_pixels.PixelSource` reads the pixels of an image chunk by chunk. Raw rows and
    ``factor`` are as in ``_features``: centres are in feature units, sums in raw units.
    """

    def stats(self, centers: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One assignment pass: per-cluster (weighted) counts (k,) and raw sums (k, d)."""

    def sq_total(self, factor: np.ndarray) -> float:
        """The weighted sum of the points' squared feature norms (a constant of the run)."""

    def farthest(
        self, centers: np.ndarray, factor: np.ndarray, m: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` points farthest from their nearest centre: their squared distances
        (largest first, ties broken by position) and raw rows (m, d)."""


class TooFewDistinctPoints(ValueError):
    """Raised by seeding when the points hold fewer distinct values than clusters asked for."""

    def __init__(self, n_distinct: int, n_clusters: int):
        self.n_distinct = n_distinct
        self.n_clusters = n_clusters
        super().__init__(
            f"n_clusters={n_clusters} is larger than the number of distinct points "
            f"({n_distinct}); ask for at most {n_distinct} clusters."
        )


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

    source: Source
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
