"""One model for many images: a fit on a pooled, bounded sample of all of them.

Each image is read once for its value range and a uniform sample of its pixels (about
``sample_size / n_images`` of them, so the pool stays ``sample_size`` pixels whatever the
number of images), then let go; the model is seeded and refined on the pool, by the same
stages as a single run. Labelling an image is then :func:`predict`: the same ids and colours
in every image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ._io import is_picture
from ._lloyd import Lloyd
from ._params import Image, Params, check_image, check_int, fit_overlap, value_scale
from ._pixels import PixelSource
from ._points import PointSource
from ._run import cluster_order, feature_space, result_of
from ._seeding import SAMPLE_ROUNDS, Sample, budget, plan, seed


def is_several(image) -> bool:
    """Whether ``image`` is several images: a list or tuple of arrays (objects with a shape
    and a dtype) or Pillow images, not a nested list of numbers."""
    return (
        isinstance(image, list | tuple)
        and len(image) > 0
        and all(
            (hasattr(i, "shape") and hasattr(i, "dtype")) or is_picture(i) or callable(i)
            for i in image
        )
    )


def fit_pooled(images: Sequence, arguments: dict, on_image: Callable | None = None,
               on_error: Callable | None = None):  # fmt: skip
    """The model of several images (arrays, or callables that return one when called, read
    one at a time), fitted on a pooled sample; ``arguments`` are :func:`kmeans`'s, by name.

    Returns a :class:`KMeansResult` without labels: its counts, inertia and history are the
    pool's. ``on_image(i)`` is called as each image has been read. With ``on_error``, an
    image that cannot be read or does not go with the first is skipped, and
    ``on_error(i, error)`` told; without, the error is raised.
    """
    if arguments.get("mask") is not None:
        raise ValueError(
            "mask cannot be given with several images; mask each image instead (a numpy "
            "masked array, np.ma.masked_array(image, mask=~keep), or NaN in a float image)."
        )
    rng = np.random.default_rng(arguments["random_state"])
    params, first, shapes, scans, rows = None, None, [], [], []
    quota = max(1, math.ceil(arguments["sample_size"] / len(images)))
    for index, source in enumerate(images):
        try:
            image = _checked(source() if callable(source) else source, arguments, index, first)
        except (ValueError, TypeError, OSError) as err:  # a bad input file: a ValueError
            if on_error is None:
                raise
            on_error(index, err)
            continue
        if first is None:
            first, params = image, Params.check(arguments, image)
        image = fit_overlap(image, params.filters)
        pixels = PixelSource(image.data, image.mask, image.layout.alpha, filters=params.filters)
        n_pixels = math.prod(image.spatial_shape)
        flat = np.arange(n_pixels)
        if quota < n_pixels:
            flat = np.sort(rng.choice(n_pixels, size=quota, replace=False))
        scan, sampled = pixels.scan_and_sample(flat)
        if scan[0]:
            scans.append(scan)
            rows.append(sampled)
        shapes.append(image.spatial_shape)
        if on_image is not None:
            on_image(index)
    if first is None:
        raise ValueError("None of the images could be read.")
    if not scans:
        raise ValueError("No pixel to cluster: every pixel of every image is masked out, "
                         "fully transparent or NaN.")  # fmt: skip
    n_valid = sum(s[0] for s in scans)
    vmin = np.min([s[1] for s in scans], axis=0)
    vmax = np.max([s[2] for s in scans], axis=0)
    space = feature_space(params, first, vmin, vmax, shapes)
    return _fit(params, first, space, _pool(rows, space, len(first.spatial_shape)), n_valid, rng)


def _checked(array, arguments: dict, index: int, first: Image | None) -> Image:
    """One of the images, checked, and checked against the first."""
    image = check_image(array, arguments["channel_axis"], arguments["alpha"])
    if first is None:
        return image
    if image.data.ndim != first.data.ndim or image.n_channels != first.n_channels:
        raise ValueError(
            f"image {index} has shape {tuple(np.shape(array))}, which does not go with image "
            f"0's channels and dimensions (shape {first.data.shape[:-1]} with "
            f"{first.n_channels} channel(s)): all images need the same channels."
        )
    if value_scale(image.dtype) != value_scale(first.dtype):
        raise ValueError(
            f"image {index} has dtype {image.dtype}, image 0 has {first.dtype}: their values "
            "are on other scales; convert them to one dtype first."
        )
    return image


def _pool(rows: list, space, ndim: int) -> np.ndarray:
    """The pooled sample as raw rows of ``space``."""
    pooled = np.concatenate(rows)
    if space.n_spatial == 0:
        pooled = pooled[:, ndim:]
    pooled[:, space.n_spatial :] = space.values(pooled[:, space.n_spatial :])
    return pooled


def _fit(params: Params, first: Image, space, pooled: np.ndarray, n_valid: int, rng):
    if len(pooled) < params.n_clusters:
        raise ValueError(
            f"n_clusters={params.n_clusters} is larger than the pooled sample of pixels to "
            f"cluster ({len(pooled)}): raise sample_size or lower n_clusters."
        )
    weights = np.ones(len(pooled))
    exhaustive = len(pooled) == n_valid
    sample = Sample(pooled, weights, exhaustive)
    factor = space.factor
    p = params
    bound = budget(p.max_iter, len(pooled), p.n_clusters)  # the rounds run over the pool
    seeding = plan(len(pooled), p.n_clusters, p.init, p.n_init, SAMPLE_ROUNDS, bound)
    centers = seed(sample, p.n_clusters, p.init, rng, factor, seeding)
    points = PointSource(pooled, weights)
    lloyd = Lloyd(points, centers, factor, params.max_iter, params.tol, check_distinct=exhaustive)
    for _ in lloyd.rounds():
        pass
    centers = lloyd.centers[cluster_order(lloyd.centers, space.n_values)]
    _, counts, sums = points.nearest_and_stats(centers, factor)
    return result_of(lloyd, centers, (counts, sums), space, first, None)


def cluster_table(labels, n_clusters: int, names: Sequence[str] | None = None):
    """Per image (or frame), per cluster: the pixel count and the fraction of the image's
    clustered pixels (label 0 is not counted). Returns columns ``image``, ``cluster``,
    ``count``, ``fraction``.

    ``labels`` is a sequence of label images (the list :func:`kmeans` of several images
    returns), or one array: 1-D or 2-D, one image; a stack (3-D or more, a time-lapse), one
    image per frame along its first axis. Ids must lie in 0..``n_clusters``.
    """
    n_clusters = check_int("n_clusters", n_clusters, 1)
    if getattr(labels, "ndim", None) is not None and labels.ndim <= 2:
        labels = [labels]
    if names is not None and len(names) != len(labels):
        raise ValueError(f"names holds {len(names)} names for {len(labels)} label images.")
    counts = [_cluster_counts(image, n_clusters, index) for index, image in enumerate(labels)]
    return counts_table(counts, names)


def _cluster_counts(image, n_clusters: int, index: int) -> np.ndarray:
    """Pixels of each cluster 1..n_clusters in one label image (the ``index``-th)."""
    array = np.asarray(image)
    if array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {array.dtype} (image {index}).")
    if array.size and (array.min() < 0 or array.max() > n_clusters):
        raise ValueError(
            f"labels of image {index} hold ids from {array.min()} to {array.max()}, outside "
            f"0..n_clusters={n_clusters}."
        )
    return np.bincount(array.ravel(), minlength=n_clusters + 1)[1:]


def counts_table(counts: Sequence[np.ndarray], names: Sequence[str] | None = None) -> dict:
    """:func:`cluster_table` from each image's pixel counts per cluster (k,)."""
    table = {"image": [], "cluster": [], "count": [], "fraction": []}
    for index, image_counts in enumerate(counts):
        total = max(int(np.sum(image_counts)), 1)
        for cluster, count in enumerate(image_counts, start=1):
            table["image"].append(index if names is None else names[index])
            table["cluster"].append(cluster)
            table["count"].append(int(count))
            table["fraction"].append(float(count) / total)
    return table
