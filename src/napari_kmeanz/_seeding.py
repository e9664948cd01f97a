"""Seeding: initial centres from a sample of the points.

``n_init`` seedings (k-means++ or random) are drawn on a subsample sized to k and refined
there by a few Lloyd rounds; the one with the lowest inertia is then refined on the whole
sample, before the rounds over all pixels. What seeding spends is bounded by what the rounds
will (:func:`plan`), and reported as it goes (stage ``'seeding'``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _watch
from ._lloyd import Lloyd, TooFewDistinctPoints
from ._plusplus import Blocks, kmeans_plusplus
from ._points import PointSource

# Seeding runs on a subsample of the sample, of this many points per cluster (and at least
# SEED_POINTS_MIN), with SEED_ROUNDS Lloyd rounds (or until a round gains less than SEED_TOL
# of the inertia) for each of the n_init candidates; the best is then refined on the whole
# sample for at most SAMPLE_ROUNDS rounds, until a round gains less than SAMPLE_TOL (whatever
# ``tol`` is: it governs the rounds over all pixels). Measured on the 4096x4096 photo, 5-D
# k=16: with tol=0 the refinement took 35 rounds and 0.18 s to the sample's strict
# convergence, against 12 rounds and 0.09 s, and the inertia after 10 rounds over all pixels
# differed by 3e-5. With the passes compiled, SAMPLE_TOL went from 1e-5 to 1e-4: on a
# 2048x3072 photo, 5-D, k=16, the refinement's 21 rounds (2 ms each over 65536 points) were a
# fifth of a run of 10 rounds; from 1e-4, the time before the rounds over all pixels fell from
# 0.10 to 0.08 s, and from 0.083 to 0.067 s for the default run to convergence, at a mean MSE
# 4.5e-5 and 3.5e-5 higher (six and four seeds); the 4096x6144 colour run and the k=1000 and
# 512x512 runs, whose refinement the budget bounds, are the same.
SEED_POINTS_PER_CLUSTER = 256
SEED_POINTS_MIN = 8192
SEED_ROUNDS = 10
SEED_TOL = 1e-4
SAMPLE_ROUNDS = 100
SAMPLE_TOL = 1e-4
# What seeding may weigh, in point-centre distances. The rounds over all points weigh
# ``(max_iter + 1) * n * k`` (n points, the final labelling included), a seeding
# ``n_sub * (2 + log k + SEED_ROUNDS) * k`` (k-means++ weighs 2 + log k candidates for each
# centre), a refinement round ``n_sample * k``. The n_init seedings may weigh SEED_SHARE of
# the rounds, and so may the refinement, but never less than SEED_FREE (0.1 to 0.2 s): the
# seedings run on a smaller subsample where they would weigh more (down to SEED_POINTS_MIN),
# then fewer of them (one at least), and the refinement runs fewer rounds (one at least).
# Runs of the default ``max_iter`` with few clusters are not bounded; a run of a few rounds
# with many clusters is. Measured on a 2048x3072 photo, 5-D, k=1000, 3 rounds: sampling and
# seeding took 17.7 s of 37 s unbounded (four seedings on 65536 points, 100 refinement
# rounds); bounded, 0.62 s of 7.3 s (one seeding on 8192 points, 3 rounds), at an MSE 2.3%
# higher. A round over the sample weighs a distance several times slower than a tiled pass
# over pixels, hence a share of 1% for a target of 10% of the time.
# SEED_FREE is the floor of a run of SEED_FREE_ROUNDS rounds or more; a run of fewer rounds
# gets a floor in proportion (the command line's k=50, 5 rounds: a quarter). At 2^26, the
# four seedings and 20 refinement rounds of a 512x512 photo cost more than its 5 rounds.
# Measured on astronaut, chelsea and coffee upscaled to 512^2 and 1024^2, six seeds each,
# k=50, 5 rounds: a floor of 2^24 (one seeding, 5 refinement rounds) took 25-40% less time
# (512^2 5-D: 0.50 -> 0.29 s) at a mean MSE 0.4% higher (at most 1.0%), still 2-4% below
# scikit-learn's with the same rounds. For runs to convergence (k=40 and 50, 5-D, up to 100
# rounds) the same cut saved no time and cost up to 1.6% of MSE: they keep 2^26.
SEED_SHARE = 0.01
SEED_FREE = 1 << 26
SEED_FREE_ROUNDS = 24


@dataclass(frozen=True)
class Plan:
    """How a seeding runs: its subsample's size, the seedings drawn, the refinement rounds."""

    n_sub: int
    n_init: int
    refine_rounds: int

    def steps(self, n_clusters: int, init: str) -> int:
        """The steps reported through the seeding: a centre chosen, a round run."""
        per_seeding = (n_clusters if init == "k-means++" else 0) + SEED_ROUNDS
        return self.n_init * per_seeding + self.refine_rounds


def plan(n_sample: int, n_clusters: int, init, n_init: int, refine_rounds: int, budget) -> Plan:
    """The :class:`Plan` of ``n_init`` seedings from a sample of ``n_sample`` points, with at
    most ``refine_rounds`` refinement rounds, each part within ``budget`` distances (from
    :func:`budget`; None: no bound)."""
    n_sub = min(n_sample, max(SEED_POINTS_MIN, SEED_POINTS_PER_CLUSTER * n_clusters))
    if budget is None or not isinstance(init, str):  # (an array of centres: no seeding)
        return Plan(n_sub, n_init, refine_rounds)
    per_point = (
        (2 + math.log(n_clusters) if init == "k-means++" else 0) + SEED_ROUNDS
    ) * n_clusters
    floor = min(n_sample, max(SEED_POINTS_MIN, n_clusters))
    n_sub = max(floor, min(n_sub, int(budget // (n_init * per_point))))
    n_init = max(1, min(n_init, int(budget // (n_sub * per_point))))
    refine_rounds = min(refine_rounds, max(1, int(budget // (max(n_sample, 1) * n_clusters))))
    return Plan(n_sub, n_init, refine_rounds)


def budget(max_iter: int, n_points: int, n_clusters: int) -> float:
    """What the seedings may weigh, and the refinement too, in point-centre distances (see
    SEED_SHARE), for ``max_iter`` rounds over ``n_points`` points."""
    floor = SEED_FREE * min(1.0, (max_iter + 1) / SEED_FREE_ROUNDS)
    return max(floor, SEED_SHARE * (max_iter + 1) * n_points * n_clusters)


@dataclass(frozen=True, eq=False)
class Sample:
    """Points to seed from: raw rows (n, d) in raw units, their weights (n,), and whether
    they are every point there is (then too few distinct ones raise at once)."""

    rows: np.ndarray
    weights: np.ndarray
    exhaustive: bool


def seed(sample: Sample, n_clusters, init, rng, factor, plan: Plan) -> np.ndarray:
    """Initial centres (k, d) in feature space: ``init`` itself when it is an array, else the
    best of ``plan.n_init`` seedings on a subsample, refined on the whole sample for at most
    ``plan.refine_rounds`` rounds."""
    if not isinstance(init, str):
        return init.copy()
    rows, weights = sample.rows, sample.weights
    sub = np.sort(rng.choice(len(rows), size=plan.n_sub, replace=False))
    # (the seedings draw from the subsample's points in their own order; a pass may move the
    # source's, see PointSource._put_in_order)
    sub_rows, sub_weights = rows[sub], weights[sub]
    subsample = PointSource(sub_rows, sub_weights)
    points = sub_rows * factor
    blocks = Blocks.of(points, sub_weights) if init == "k-means++" else None  # (all seedings')
    must_hold = sample.exhaustive and plan.n_sub == len(rows)  # every point: too few raise
    total = plan.steps(n_clusters, init)
    per_seeding = (total - plan.refine_rounds) // plan.n_init
    best = None
    for trial in range(plan.n_init):
        progress = (trial * per_seeding, total)
        centers = _draw(points, sub_weights, blocks, n_clusters, init, rng, progress, must_hold)
        refined = Lloyd(subsample, centers, factor, SEED_ROUNDS, SEED_TOL)
        for _ in refined.rounds():
            done = (trial + 1) * per_seeding - SEED_ROUNDS + refined.n_iter
            _watch.report("seeding", done, total)
        if plan.n_init == 1:  # (nothing to compare: no pass for its inertia)
            best = (None, refined.centers)
            break
        inertia = refined.inertia(refined.centers, *subsample.stats(refined.centers, factor))
        if best is None or inertia < best[0]:
            best = (inertia, refined.centers)
    refine = Lloyd(PointSource(rows, weights), best[1], factor, plan.refine_rounds, SAMPLE_TOL)
    for _ in refine.rounds():
        _watch.report("seeding", plan.n_init * per_seeding + refine.n_iter, total)
    _watch.report("seeding", total, total)  # done, wherever the rounds stopped
    if sample.exhaustive and np.unique(refine.centers, axis=0).shape[0] < n_clusters:
        n_distinct = np.unique(rows * factor, axis=0).shape[0]
        if n_distinct < n_clusters:
            raise TooFewDistinctPoints(n_distinct, n_clusters)
    return refine.centers


def _draw(points, weights, blocks, n_clusters, init, rng, progress, must_hold) -> np.ndarray:
    """One seeding on the subsample's ``points`` (feature units; ``blocks``: as k-means++
    holds them); ``progress`` is the steps done before it and in all, for the seeding's
    progress reports."""
    done, total = progress

    def on_step(c):
        _watch.report("seeding", done + c, total)

    try:
        if init == "k-means++":
            return kmeans_plusplus(points, weights, n_clusters, rng, on_step, blocks)
        return random_init(points, weights, n_clusters, rng)  # one draw: no steps to report
    except TooFewDistinctPoints:
        if must_hold:
            raise
        # The subsample holds fewer distinct points than the data may: start the missing
        # clusters on duplicates; the next rounds relocate them to far points.
        distinct = np.unique(points, axis=0)
        return distinct[np.arange(n_clusters) % len(distinct)]


def random_init(
    x: np.ndarray, weights: np.ndarray, n_clusters: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_clusters`` distinct points of ``x`` drawn with probability proportional to weight."""
    if len(x) < n_clusters:
        raise TooFewDistinctPoints(len(x), n_clusters)
    picks = rng.choice(len(x), size=n_clusters, replace=False, p=weights / weights.sum())
    return x[np.sort(picks)].astype(np.float64)
