"""The numpy kernels: pruning is exact, sums are exact, tiles cover a chunk once."""

import numpy as np
import pytest
from skimage import data

from napari_kmeanz import _lloyd, _pixels


def brute_force(raw, centers, factor):
    d2 = (((raw * factor)[:, None, :] - centers[None]) ** 2).sum(axis=2)
    return d2.argmin(axis=1), d2


@pytest.mark.parametrize("k", [2, 5, 16, 50])
def test_pruned_assignment_equals_brute_force(k):
    image = data.astronaut()[:256, :256]
    yy, xx = np.indices(image.shape[:2])
    raw = np.column_stack([yy.ravel(), xx.ravel(), image.reshape(-1, 3)]).astype(np.float64)
    factor = np.array([0.5, 0.5, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(k)
    centers = (raw[rng.choice(len(raw), k, replace=False)] * factor) + rng.normal(0, 3, (k, 5))
    rows1 = _lloyd.with_ones(raw)
    expected, d2 = brute_force(raw, centers, factor)
    got = _lloyd.assign(rows1, centers, factor)
    # identical, except where two centres are equally near up to rounding
    best = d2[np.arange(len(d2)), expected]
    differs = got != expected
    assert np.allclose(d2[differs, got[differs]], best[differs], rtol=1e-12)
    assert differs.mean() < 1e-4


def test_ties_and_duplicate_centres():
    raw = np.array([[0.0], [1.0], [2.0], [3.0]])
    centers = np.array([[1.0], [1.0], [3.0]])  # a duplicate, and pixel 2 halfway to two centres
    labels = _lloyd.assign(_lloyd.with_ones(raw), centers, np.ones(1))
    np.testing.assert_array_equal(labels, [0, 0, 0, 2])  # ties go to the lowest index


def test_accumulate_sums_are_exact_for_integer_data():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4096, size=(200_000, 4)).astype(np.float64)
    centers = raw[:12].copy()
    counts, sums = np.zeros(12), np.zeros((12, 4))
    labels = _lloyd.accumulate(_lloyd.with_ones(raw), centers, np.ones(4), counts, sums)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=12))
    for f in range(4):
        exact = np.zeros(12, dtype=np.int64)
        np.add.at(exact, labels, raw[:, f].astype(np.int64))
        np.testing.assert_array_equal(sums[:, f], exact)


@pytest.mark.parametrize("shape", [(1000, 777), (3, 300, 200), (50_000,), (7, 5)])
def test_tiles_cover_each_pixel_once(shape):
    covered = np.zeros(shape, dtype=int)
    for slices in _pixels._sub_blocks(shape, 4096):
        covered[slices] += 1
        assert np.prod([s.stop - s.start for s in slices]) <= 4096
    assert np.all(covered == 1)
