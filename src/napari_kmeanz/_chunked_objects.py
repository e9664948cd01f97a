"""The objects of dask labels, chunk by chunk, with memory bounded by the chunk.

Each chunk is labelled with a margin of one pixel of its neighbours (zeros beyond the
image): a region touching the chunk's edge then carries on into the margin, so a pixel of
the margin has a label in this chunk and, as a pixel of the neighbour's own part, one there;
every such pair of labels is one region. The pairs come from the pixels next to the chunks'
edges only; a graph of them joins the chunks' labels into regions, numbered by their first
pixel in C order as one labelling of the whole array numbers them. The table is summed
chunk by chunk; the labels come back lazily, each chunk labelled again when it is computed.
"""

from __future__ import annotations

import functools

import dask
import dask.array as da
import numpy as np

from ._compute import chunk_grid
from ._params import known_chunks


def chunked_objects(array: da.Array, chosen, connectivity: int, image, spacing, origin):
    """``(labels, table)`` of :func:`_segment.objects` for dask ``array`` (see there);
    ``chosen`` are the clusters whose regions count (None: all). Along an axis of
    ``spacing`` 0 no region goes from one plane to the next (:func:`label_regions`)."""
    labelling = (connectivity, planes_of(spacing))  # label_regions' arguments, per chunk
    selected = array.map_blocks(_select, chosen, dtype=array.dtype)
    margin = da.overlap.overlap(selected, depth=1, boundary=0)
    values = None if image is None else _image_chunks(image, array)
    blocks = margin.to_delayed()
    grid = chunk_grid(array.chunks)
    parts = []
    for idx, offset in grid:
        chunk_values = None if values is None else values[(*idx, 0)]
        summary = dask.delayed(_chunk_summary)
        parts.append(summary(blocks[idx], offset, array.shape, labelling, chunk_values))
    summaries = dask.compute(*parts)
    starts = np.cumsum([0] + [s["n"] for s in summaries])  # each chunk's first label - 1
    final, first = _regions(summaries, starts)
    table = _table(summaries, final, first, array.ndim, spacing, origin)
    relabel = functools.partial(
        _relabel, final=final, numbers=starts[:-1].astype(np.int64),
        numblocks=array.numblocks, labelling=labelling,
    )  # fmt: skip
    labels = da.map_blocks(relabel, margin, chunks=array.chunks, dtype=np.int64)
    return labels, table


def _select(block, chosen):
    if chosen is None:
        return block
    return np.where(np.isin(block, chosen), block, 0).astype(block.dtype, copy=False)


def check_object_image(image, shape: tuple[int, ...]):
    """The image whose values the objects' table averages (numpy or dask), checked against
    the labels' ``shape`` before any work; None for none."""
    if image is None:
        return None
    values = known_chunks(image, "image") if isinstance(image, da.Array) else np.asarray(image)
    if tuple(values.shape[: len(shape)]) != tuple(shape) or values.ndim > len(shape) + 1:
        raise ValueError(
            f"image has shape {values.shape}, but the labels have shape {tuple(shape)} "
            "(an image has the labels' shape, with an optional channel axis last)."
        )
    if values.dtype.kind not in "biuf":
        raise TypeError(f"image must have a numeric dtype, got dtype {values.dtype}.")
    return values


def _image_chunks(values, array: da.Array):
    """The image's values (checked) as a dask array of the labels' chunks and one channel
    axis."""
    if not isinstance(values, da.Array):
        values = da.from_array(values)
    if values.ndim == array.ndim:
        values = values[..., None]
    return values.rechunk((*array.chunks, -1)).to_delayed()


def planes_of(spacing) -> tuple[int, ...]:
    """The axes of spacing 0: stacks of separate planes (a time axis)."""
    return tuple(int(axis) for axis in np.flatnonzero(np.asarray(spacing) == 0))


def plane_area(spacing: np.ndarray) -> float:
    """What a pixel counts for in an object's area: the product of the spacings, those of
    0 left out (an object lies in one plane along such an axis)."""
    return float(np.prod(spacing[spacing > 0]))


def step(spacing: np.ndarray) -> np.ndarray:
    """World units per index along each axis for centroids: the spacing, 1 where it is 0
    (the centroid along such an axis is the index of the object's plane)."""
    return np.where(spacing > 0, spacing, 1.0)


# skimage.measure.label finds regions along at most this many axes.
MAX_REGION_AXES = 3


def check_region_axes(shape, planes) -> None:
    """Refuse labels whose regions would span more axes than regions are found along: a
    stack of volumes (t, z, y, x) needs its time axis marked as planes (spacing 0)."""
    if len(shape) - len(planes) > MAX_REGION_AXES:
        example = ", ".join(["0"] + ["1"] * (len(shape) - 1))
        raise ValueError(
            f"labels of shape {tuple(shape)} have {len(shape) - len(planes)} axes along which "
            f"regions connect, more than {MAX_REGION_AXES}: give spacing 0 for the axes that "
            f"are frames (a time axis), e.g. spacing=({example})."
        )


def label_regions(labels: np.ndarray, connectivity: int, planes=()) -> np.ndarray:
    """``skimage.measure.label`` of ``labels`` (each connected region of one non-zero id),
    no region crossing from one plane to the next along the axes ``planes`` (those of
    spacing 0: a time axis): each plane is labelled on its own. Numbered in C order of the
    regions' first pixels, as measure.label numbers them."""
    from skimage import measure

    if not planes:
        return measure.label(labels, background=0, connectivity=connectivity)
    out = np.zeros(labels.shape, dtype=np.int64)
    rest = labels.ndim - len(planes)
    n = 0
    for plane, into in each_plane(labels, out, planes):
        if rest == 0:  # a pixel per plane: each non-zero one a region
            numbered = np.int64(plane != 0)
        else:
            numbered = measure.label(plane, background=0, connectivity=min(connectivity, rest))
        into[...] = np.where(numbered > 0, numbered + n, 0)
        n += int(numbered.max())
    if tuple(planes) == tuple(range(len(planes))):  # planes in C order: so are their regions
        return out
    ids, first = np.unique(out.ravel(), return_index=True)
    ids, first = ids[ids > 0], first[ids > 0]
    order = np.zeros(n + 1, dtype=np.int64)
    order[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1)
    return order[out]


def each_plane(array: np.ndarray, out: np.ndarray, planes: tuple[int, ...]):
    """``(plane of array, the same plane of out)`` for every plane along the axes ``planes``
    (of spacing 0), in C order; the second a view to write the plane's result into."""
    lead = tuple(range(len(planes)))
    source, target = np.moveaxis(array, planes, lead), np.moveaxis(out, planes, lead)
    for index in np.ndindex(*source.shape[: len(planes)]):
        yield source[index], target[(*index, ...)]


def _chunk_summary(block, offset, shape, labelling, values):
    """One chunk's labels (with its margin) summed up: per label its pixels, coordinate
    sums, first pixel and cluster (and channel sums), and the labels of the pixels at the
    edges: those of the chunk's own outer layer and those of its margin, by position."""
    local = label_regions(block, *labelling)
    core = tuple(slice(1, n - 1) for n in block.shape)
    own = local[core]
    n = int(local.max())
    flat = own.ravel()
    coordinates = np.indices(own.shape).reshape(own.ndim, -1) + np.array(offset)[:, None]
    summary = {"n": n, "count": np.bincount(flat, minlength=n + 1)}
    summary["sums"] = [np.bincount(flat, weights=c, minlength=n + 1) for c in coordinates]
    first = np.full(n + 1, -1)
    first[flat[::-1]] = np.arange(flat.size)[::-1]  # C order in a chunk is C order overall
    found = first >= 0
    position = np.full(n + 1, np.iinfo(np.int64).max)
    position[found] = np.ravel_multi_index(tuple(coordinates[:, first[found]]), shape)
    summary["first"] = position
    summary["cluster"] = np.where(found, block[core].ravel()[np.maximum(first, 0)], 0)
    if values is not None:
        channels = np.asarray(values, np.float64).reshape(flat.size, -1)
        summary["channels"] = [
            np.bincount(flat, weights=channels[:, c], minlength=n + 1)
            for c in range(channels.shape[1])
        ]
    edge = np.ones(block.shape, bool)
    edge[tuple(slice(2, n - 2) for n in block.shape)] = False  # the margin and outer layer
    inside = np.zeros(block.shape, bool)
    inside[core] = True
    for name, where in (("shell", edge & inside), ("margin", edge & ~inside)):
        where &= local > 0
        at = np.nonzero(where)
        coords = [a - 1 + o for a, o in zip(at, offset, strict=True)]
        within = np.all([(c >= 0) & (c < s) for c, s in zip(coords, shape, strict=True)], 0)
        summary[name] = (
            np.ravel_multi_index(tuple(c[within] for c in coords), shape),
            local[at][within],
        )
    return summary


def _regions(summaries, starts):
    """Each chunk label's region number (1.. in the order of the regions' first pixels; 0
    for the background) and each label's first pixel (C order): ``(final, first)``, both
    over every chunk's labels (label ``l`` of chunk ``i`` is ``starts[i] + l``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(starts[-1]) + 1
    shell_at = np.concatenate([s["shell"][0] for s in summaries])
    shell_label = np.concatenate(
        [s["shell"][1] + b for s, b in zip(summaries, starts, strict=False)]
    )
    margin_at = np.concatenate([s["margin"][0] for s in summaries])
    margin_label = np.concatenate(
        [s["margin"][1] + b for s, b in zip(summaries, starts, strict=False)]
    )
    order = np.argsort(shell_at, kind="stable")
    place = np.searchsorted(shell_at[order], margin_at)
    matched = place < len(order)
    matched[matched] = shell_at[order[place[matched]]] == margin_at[matched]
    pairs_a = margin_label[matched]
    pairs_b = shell_label[order[place[matched]]]
    graph = coo_matrix((np.ones(len(pairs_a)), (pairs_a, pairs_b)), shape=(n, n))
    _, region = connected_components(graph, directed=False)
    count = np.concatenate([[0]] + [s["count"][1:] for s in summaries])
    first = np.concatenate([[np.iinfo(np.int64).max]] + [s["first"][1:] for s in summaries])
    region_first = np.full(region.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(region_first, region, first)
    region_count = np.bincount(region, weights=count, minlength=region.max() + 1)
    real = np.flatnonzero(region_count > 0)
    real = real[np.argsort(region_first[real], kind="stable")]
    number = np.zeros(region.max() + 1, np.int64)
    number[real] = np.arange(1, len(real) + 1)
    final = number[region]
    final[0] = 0
    return final, first


def _table(summaries, final, first, ndim, spacing, origin) -> dict:
    """The regions' table, summed from the chunks' (see :class:`_segment.Objects`)."""
    m = int(final.max())

    def per_region(part):  # a per-label quantity of every chunk, summed by region
        weights = np.concatenate([[0.0]] + [np.asarray(p, np.float64)[1:] for p in part])
        return np.bincount(final, weights=weights, minlength=m + 1)[1:]

    counts = per_region([s["count"] for s in summaries])
    # the cluster of each region: that of its label holding its first pixel
    clusters = np.concatenate([[0]] + [s["cluster"][1:] for s in summaries])
    best = np.full(m + 1, np.iinfo(np.int64).max)
    np.minimum.at(best, final, first)
    holder = np.zeros(m + 1, np.int64)
    is_first = (first == best[final]) & (final > 0)
    holder[final[is_first]] = np.flatnonzero(is_first)
    table = {
        "label": np.arange(1, m + 1),
        "cluster": clusters[holder[1:]].astype(summaries[0]["cluster"].dtype),
        "area": counts * plane_area(spacing),
    }
    for axis in range(ndim):
        sums = per_region([s["sums"][axis] for s in summaries])
        table[f"centroid-{axis}"] = origin[axis] + step(spacing)[axis] * sums / np.maximum(
            counts, 1
        )
    if "channels" in summaries[0]:
        for channel in range(len(summaries[0]["channels"])):
            sums = per_region([s["channels"][channel] for s in summaries])
            table[f"intensity_mean-{channel}"] = sums / np.maximum(counts, 1)
    return table


def _relabel(block, *, final, numbers, numblocks, labelling, block_info=None):
    """A chunk's region numbers: labelled again, as in its summary, then renumbered."""
    location = block_info[0]["chunk-location"]
    start = numbers[np.ravel_multi_index(location, numblocks)]
    local = label_regions(block, *labelling)
    core = tuple(slice(1, n - 1) for n in block.shape)
    own = local[core]
    return np.where(own > 0, final[own + start], 0)
