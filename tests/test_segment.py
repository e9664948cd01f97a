"""From clusters to a segmentation: clean() and objects()."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage import data, measure

from napari_kmeanz import clean, kmeans, objects
from test_features import adjusted_rand, three_classes


def test_min_size_leaves_no_small_region():
    labels = np.ones((40, 40), np.uint8)
    labels[20:, :] = 2
    labels[5, 5] = 2  # a 1-pixel speck of 2 inside 1
    labels[30:33, 30:33] = 1  # a 3x3 island of 1 inside 2
    labels[10, 10:14] = 3  # 4 pixels of 3 inside 1
    labels[0, 39] = 0  # not clustered: stays
    cleaned = clean(labels, min_size=10)
    expected = np.ones((40, 40), np.uint8)
    expected[20:, :] = 2
    expected[0, 39] = 0
    np.testing.assert_array_equal(cleaned, expected)
    assert cleaned.dtype == labels.dtype
    np.testing.assert_array_equal(labels[5, 5], 2)  # the input is left as it was


def test_merge_goes_to_the_neighbour_sharing_most_boundary():
    labels = np.full((9, 9), 1, np.uint8)
    labels[:, 5:] = 2
    labels[3:6, 3:5] = 3  # 6 pixels: 4 boundary pixels with 1 (left, top, bottom) ...
    cleaned = clean(labels, min_size=7)
    ring_1 = ((labels == 1) & _ring(labels == 3)).sum()
    ring_2 = ((labels == 2) & _ring(labels == 3)).sum()
    assert ring_1 > ring_2
    assert (cleaned[3:6, 3:5] == 1).all()


def _ring(inside):
    from scipy import ndimage

    return ndimage.binary_dilation(inside) & ~inside


def test_majority_filter_removes_specks_and_keeps_edges():
    labels = np.ones((30, 30), np.uint8)
    labels[:, 15:] = 2
    labels[7, 7] = 2
    labels[20, 22] = 1
    cleaned = clean(labels, radius=1)
    expected = np.ones((30, 30), np.uint8)
    expected[:, 15:] = 2
    np.testing.assert_array_equal(cleaned, expected)


@pytest.mark.parametrize("ndim", [2, 3])
def test_cleaning_raises_the_rand_index_and_dask_gives_the_same(ndim):
    truth, image = three_classes((128, 128), noise=2.0, seed=5)  # SNR 0.5
    if ndim == 3:
        truth = np.stack([truth] * 6)
        image = np.stack([three_classes((128, 128), noise=2.0, seed=s)[1] for s in range(6)])
    labels = kmeans(image, 3, sigma=1.5, random_state=0).labels
    cleaned = clean(labels, min_size=25, radius=1)
    assert adjusted_rand(truth, cleaned) > adjusted_rand(truth, labels)
    sizes = np.bincount(measure.label(cleaned, background=0, connectivity=1).ravel())[1:]
    assert sizes.min() >= 25
    chunks = (3, 64, 50) if ndim == 3 else (64, 50)  # short chunks join their neighbours
    lazy = clean(da.from_array(labels, chunks=chunks), min_size=25, radius=1)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), cleaned)


def test_objects_and_their_table():
    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 2:8] = 1  # two regions of cluster 1
    labels[10:18, 20:28] = 1
    labels[10:14, 2:6] = 2
    image = np.dstack([labels * 10.0, np.full((20, 30), 5.0)])
    result = objects(labels, image=image, spacing=(0.5, 2.0), origin=(100.0, -4.0))
    assert result.labels.max() == 3
    table = result.table
    np.testing.assert_array_equal(table["label"], [1, 2, 3])
    np.testing.assert_array_equal(table["cluster"], [1, 2, 1])  # in the order of first pixel
    np.testing.assert_allclose(table["area"], np.array([24, 16, 64]) * 1.0)
    np.testing.assert_allclose(table["centroid-0"], 100 + 0.5 * np.array([3.5, 11.5, 13.5]))
    np.testing.assert_allclose(table["centroid-1"], -4 + 2.0 * np.array([4.5, 3.5, 23.5]))
    np.testing.assert_allclose(table["intensity_mean-0"], [10, 20, 10])
    np.testing.assert_allclose(table["intensity_mean-1"], [5, 5, 5])
    # the same as scikit-image's regionprops, in pixels
    props = measure.regionprops_table(result.labels, properties=("label", "area", "centroid"))
    np.testing.assert_allclose(props["area"] * 1.0, table["area"])
    only = objects(labels, clusters=[2])
    assert only.labels.max() == 1 and (only.labels > 0).sum() == 16
    as_set = objects(labels, clusters={2})  # any collection of ids, a set too
    np.testing.assert_array_equal(as_set.labels, only.labels)


def test_objects_table_is_summed_slab_by_slab(monkeypatch):
    """The table of numpy labels is summed over slabs of the first axis (not from every
    pixel's coordinates at once): with slabs of a few rows, the same table as
    scikit-image's regionprops of a 3-D volume."""
    import napari_kmeanz._segment as segment

    rng = np.random.default_rng(4)
    labels = ndimage.zoom(rng.integers(1, 4, (4, 5, 6)), 4, order=0).astype(np.uint8)
    image = rng.random((*labels.shape, 2))
    whole = objects(labels, image=image).table
    monkeypatch.setattr(segment, "TABLE_SLAB", 50)  # two rows of 24 x 24 a slab, and less
    found = objects(labels, image=image)
    props = measure.regionprops_table(
        found.labels, intensity_image=image, properties=("label", "area", "centroid",
                                                         "intensity_mean")
    )  # fmt: skip
    for column, values in whole.items():
        np.testing.assert_allclose(found.table[column], values, rtol=1e-12)
    for axis in range(3):
        np.testing.assert_allclose(found.table[f"centroid-{axis}"], props[f"centroid-{axis}"])
    for channel in range(2):
        np.testing.assert_allclose(
            found.table[f"intensity_mean-{channel}"], props[f"intensity_mean-{channel}"]
        )
    np.testing.assert_array_equal(found.table["area"], props["area"])
    first = [labels[found.labels == n][0] for n in found.table["label"]]
    np.testing.assert_array_equal(found.table["cluster"], first)


@pytest.mark.parametrize("connectivity", [1, 2])
def test_objects_of_dask_labels_equal_those_in_memory(connectivity):
    """Chunk by chunk, regions across the chunks' edges (and corners, diagonally) are one
    object each: the same labels and table as one labelling of the whole array."""
    clustered = kmeans(data.astronaut()[::2, ::2], 4, random_state=0).labels  # 256 x 256
    image = data.astronaut()[::2, ::2]
    expected = objects(clustered, clusters=[1, 3], connectivity=connectivity, image=image,
                       spacing=(0.5, 2.0), origin=(1.0, 2.0))  # fmt: skip
    assert expected.labels.max() > 20
    for chunks in [(64, 64), (50, 97), ((1, 100, 155), (3, 253))]:
        lazy = objects(
            da.from_array(clustered, chunks=chunks), clusters=[1, 3],
            connectivity=connectivity, image=da.from_array(image, chunks=(40, 40, 3)),
            spacing=(0.5, 2.0), origin=(1.0, 2.0),
        )  # fmt: skip
        assert isinstance(lazy.labels, da.Array)
        np.testing.assert_array_equal(lazy.labels.compute(), expected.labels)
        assert lazy.table.keys() == expected.table.keys()
        for name, column in expected.table.items():
            np.testing.assert_allclose(lazy.table[name], column, rtol=1e-12, err_msg=name)
    # 3-D, diagonal across chunk corners
    volume = np.zeros((6, 6, 6), np.uint8)
    for i in range(6):
        volume[i, i, i] = 1
    lazy = objects(da.from_array(volume, chunks=3), connectivity=3)
    assert lazy.labels.compute().max() == 1 and len(lazy.table["label"]) == 1
    faces = objects(da.from_array(volume, chunks=3), connectivity=1)
    np.testing.assert_array_equal(faces.labels.compute(), objects(volume).labels)


@pytest.mark.parametrize("connectivity", [1, 3])
def test_objects_of_a_time_lapse_stay_in_their_frame(connectivity):
    """Along an axis of spacing 0 (a time-lapse clustered with spacing=(0, 1, 1)) an object
    is one frame's region: none spans two frames, its area is in the frame's units and its
    centroid along time is its frame; dask chunks of one frame give the same."""
    rng = np.random.default_rng(0)
    frames = np.repeat((rng.random((1, 30, 40)) > 0.6).astype(np.uint8) + 1, 3, axis=0)
    found = objects(frames, spacing=(0, 0.5, 0.5), origin=(2, 0, 0), connectivity=connectivity)
    per_frame = [measure.label(f, connectivity=min(connectivity, 2)).max() for f in frames]
    assert found.labels.max() == sum(per_frame)  # a frame's regions, again in every frame
    starts = np.cumsum([0, *per_frame])
    for t in range(3):
        in_frame = np.unique(found.labels[t])
        assert set(in_frame) == set(range(starts[t] + 1, starts[t + 1] + 1))
    np.testing.assert_array_equal(found.table["centroid-0"], 2 + np.repeat([0, 1, 2], per_frame))
    sizes = np.bincount(found.labels.ravel())[1:]
    np.testing.assert_allclose(found.table["area"], sizes * 0.25)
    for chunks in [(1, 30, 40), (2, 13, 40), (3, 30, 17)]:
        lazy = objects(da.from_array(frames, chunks=chunks), spacing=(0, 0.5, 0.5),
                       origin=(2, 0, 0), connectivity=connectivity)  # fmt: skip
        np.testing.assert_array_equal(np.asarray(lazy.labels), found.labels)
        for column, values in found.table.items():
            np.testing.assert_allclose(lazy.table[column], values, err_msg=column)


def test_clean_keeps_to_each_frame_along_an_axis_of_spacing_0():
    rng = np.random.default_rng(1)
    frames = (rng.random((3, 40, 50)) > 0.5).astype(np.uint8) + 1
    frames[1] = frames[0]
    cleaned = clean(frames, min_size=20, radius=1, spacing=(0, 1, 1))
    each = np.stack([clean(f, min_size=20, radius=1) for f in frames])
    np.testing.assert_array_equal(cleaned, each)
    assert not np.array_equal(cleaned, clean(frames, min_size=20, radius=1))  # as a volume
    for chunks in [(1, 40, 50), (2, 25, 50)]:
        lazy = clean(da.from_array(frames, chunks=chunks), min_size=20, radius=1,
                     spacing=(0, 1, 1))  # fmt: skip
        np.testing.assert_array_equal(lazy.compute(), each)


def test_a_time_lapse_of_volumes_is_split_and_cleaned_volume_by_volume():
    """(t, z, y, x) labels with spacing 0 along t: each volume on its own, as if given alone
    (skimage labels at most 3-D), numpy and dask alike; the time axis need not be first."""
    rng = np.random.default_rng(2)
    stack = (rng.random((3, 4, 20, 24)) > 0.6).astype(np.uint8) + 1
    spacing = (0, 2.0, 0.5, 0.5)
    found = objects(stack, spacing=spacing)
    alone = [objects(volume, spacing=spacing[1:]) for volume in stack]
    starts = np.cumsum([0] + [a.labels.max() for a in alone])
    for t, volume in enumerate(alone):
        expected = np.where(volume.labels > 0, volume.labels + starts[t], 0)
        np.testing.assert_array_equal(found.labels[t], expected)
        np.testing.assert_allclose(found.table["area"][starts[t] : starts[t + 1]],
                                   volume.table["area"])  # fmt: skip
    np.testing.assert_array_equal(found.table["centroid-0"], np.repeat([0, 1, 2], np.diff(starts)))
    lazy = objects(da.from_array(stack, chunks=(1, 2, 11, 24)), spacing=spacing)
    np.testing.assert_array_equal(np.asarray(lazy.labels), found.labels)
    # the same frames along axis 1: the same objects, numbered in C order of their first pixel
    moved = objects(np.moveaxis(stack, 0, 1), spacing=(2.0, 0, 0.5, 0.5))
    assert moved.labels.max() == found.labels.max()
    flat = np.moveaxis(moved.labels, 1, 0).ravel()
    np.testing.assert_array_equal(flat > 0, found.labels.ravel() > 0)
    first = np.unique(moved.labels.ravel(), return_index=True)[1][1:]
    assert np.all(np.diff(first) > 0)
    cleaned = clean(stack, min_size=10, radius=1, spacing=spacing)
    each = np.stack([clean(volume, min_size=10, radius=1) for volume in stack])
    np.testing.assert_array_equal(cleaned, each)
    lazy = clean(da.from_array(stack, chunks=(1, 4, 20, 12)), min_size=10, radius=1,
                 spacing=spacing)  # fmt: skip
    np.testing.assert_array_equal(lazy.compute(), each)


@pytest.mark.parametrize(
    "call",
    [
        lambda labels: objects(labels),
        lambda labels: objects(da.from_array(labels, chunks=2)),
        lambda labels: clean(labels, min_size=2),
        lambda labels: clean(da.from_array(labels, chunks=2), radius=1),
    ],
)
def test_regions_along_four_axes_are_refused_before_any_work(call):
    with pytest.raises(ValueError, match=r"4 axes along which regions connect, more than 3: "
                       r"give spacing 0 for the axes that are frames"):  # fmt: skip
        call(np.ones((2, 3, 4, 5), np.uint8))


def test_diagonal_connectivity():
    labels = np.zeros((5, 5), np.uint8)
    labels[0, 0] = labels[1, 1] = 1
    assert objects(labels).labels.max() == 2
    assert objects(labels, connectivity=2).labels.max() == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: clean(np.ones((4, 4), int), min_size=-1), "min_size must be >= 0, got -1"),
        (lambda: clean(np.ones((4, 4), int), radius=1.5), "radius must be an integer, got 1.5"),
        (lambda: clean(np.ones((4, 4)), min_size=2), "labels must be integers, got dtype float"),
        (lambda: clean(np.ones((4, 4), int), connectivity=3), "connectivity must be an integer"),
        (lambda: objects(np.ones((4, 4), int), spacing=(1, -1)), "spacing must hold 2 finite"),
        (lambda: objects(np.ones((4, 4), int), image=np.ones((5, 4))), "image has shape (5, 4)"),
        (lambda: objects(np.ones((4, 4), int), clusters=["a"]), "clusters must be a sequence"),
        (lambda: objects(-np.ones((4, 4), int)), "labels must be >= 0 (0: no cluster"),
        (lambda: clean(np.ones((4, 4), int), spacing=(0,)), "spacing must hold 2 finite"),
        (lambda: clean(np.full((4, 4), -3), min_size=2), "got a minimum of -3"),
        (lambda: objects(np.ones((4, 4), int), clusters=[]), "clusters=[] chooses no cluster"),
        (lambda: objects(np.ones((4, 4), int), clusters=[0]), "cluster ids 1..k (0 is no"),
        (lambda: objects(np.ones((4, 4), int), origin=[1]), "2 finite numbers, got (1.0,)."),
        (lambda: objects(np.ones((4, 4), int), image=np.full((4, 4), "a")), "numeric dtype"),
        (
            lambda: objects(da.ones((4, 4), dtype=int, chunks=2), image=np.ones((4, 5))),
            "image has shape (4, 5)",
        ),
        (lambda: objects(_unknown_chunks(8)), "labels is a dask array of unknown chunk sizes"),
        (lambda: clean(_unknown_chunks(8), min_size=2), "call labels.compute_chunk_sizes()"),
        (
            lambda: objects(np.ones(8, int), image=_unknown_chunks(8)),
            "image is a dask array of unknown chunk sizes (shape (None,))",
        ),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises((ValueError, TypeError)) as err:
        call()
    assert message in str(err.value)


def _unknown_chunks(n):
    """A dask array of ``n`` ones whose chunk sizes dask does not know (a boolean index)."""
    ones = da.ones(n, dtype=int, chunks=3)
    return ones[ones > 0]


def test_margins_are_low_where_the_clustering_is_unsure():
    from skimage import data

    from napari_kmeanz import margins

    image = np.dstack([data.astronaut(), np.full((512, 512), 255, np.uint8)])
    image[:20, :, 3] = 0  # transparent: not clustered
    result = kmeans(image, 5, spatial_weight=0.5, random_state=0)
    margin = margins(image, result)
    assert margin.dtype == np.float32 and margin.shape == (512, 512)
    assert np.isnan(margin[:20]).all() and not np.isnan(margin[20:]).any()
    inside = margin[20:]
    assert inside.min() >= 0 and inside.max() <= 1
    labels = result.labels[20:]
    boundary = np.zeros(labels.shape, bool)
    boundary[:-1] |= labels[:-1] != labels[1:]
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    assert inside[boundary].mean() < 0.5 * inside[~boundary].mean()
    lazy = margins(da.from_array(image, chunks=(100, 200, 4)), result)
    np.testing.assert_array_equal(lazy.compute(), margin)
    one = kmeans(data.camera(), 1, random_state=0)
    assert (margins(data.camera(), one) == 1).all()
