"""One model for several images: a pooled fit, the same ids everywhere."""

import dask.array as da
import numpy as np
import pytest
from skimage import data, util

from napari_kmeanz import iter_kmeans, kmeans, predict
from napari_kmeanz._many import cluster_table


def test_several_images_share_one_model():
    images = [data.astronaut(), data.coffee(), data.chelsea()]
    result = kmeans(images, 5, random_state=0, sample_size=30_000)
    assert isinstance(result.labels, list) and len(result.labels) == 3
    for image, labels in zip(images, result.labels, strict=True):
        assert labels.shape == image.shape[:2]
        np.testing.assert_array_equal(predict(image, result), labels)
    assert result.counts.sum() <= 30_000 + 3  # a bounded pool, whatever the images
    # the same ids mean the same colours in every image
    for labels, image in zip(result.labels, images, strict=True):
        for cluster in range(1, 6):
            where = labels == cluster
            if where.sum() > 1000:
                mean = image[where].mean(axis=0)
                assert np.abs(mean - result.colors[cluster - 1]).max() < 40


def test_several_images_of_other_shapes_are_recoloured_and_located_each():
    """recolor() and centroids() of several images give one per image (numpy failed on the
    list of labels of other shapes)."""
    images = [data.astronaut()[::4, ::4], data.coffee()[::4, ::4]]
    result = kmeans(images, 4, random_state=0)
    painted, centroids = result.recolor(), result.centroids()
    assert [p.shape for p in painted] == [i.shape for i in images]
    for one, labels, where in zip(painted, result.labels, centroids, strict=True):
        np.testing.assert_array_equal(one, result.colors.round().astype(np.uint8)[labels - 1])
        yy, xx = np.indices(labels.shape)
        np.testing.assert_allclose(where[0], [yy[labels == 1].mean(), xx[labels == 1].mean()])


def test_the_same_image_twice_gets_the_same_labels_and_dask_stays_lazy():
    image = data.astronaut()
    lazy = da.from_array(image, chunks=(128, 256, 3))
    result = kmeans([image, lazy], 4, spatial_weight=0.5, random_state=0)
    assert isinstance(result.labels[1], da.Array)
    np.testing.assert_array_equal(result.labels[1].compute(), result.labels[0])


def test_several_images_with_features():
    noisy = [util.img_as_float(data.camera()) + np.random.default_rng(s).normal(0, 0.2, (512, 512))
             for s in range(2)]  # fmt: skip
    result = kmeans(noisy, 3, sigma=2, features=["gaussian", "std"], random_state=0)
    assert result.colors.shape == (3, 1)
    np.testing.assert_array_equal(predict(noisy[1], result), result.labels[1])


def test_a_table_per_image():
    labels = [np.array([[1, 1], [2, 0]]), np.array([[3, 3, 3, 1]])]
    table = cluster_table(labels, 3, names=["a.png", "b.png"])
    assert table["image"] == ["a.png"] * 3 + ["b.png"] * 3
    assert table["count"] == [2, 1, 0, 1, 0, 3]
    np.testing.assert_allclose(table["fraction"], [2 / 3, 1 / 3, 0, 1 / 4, 0, 3 / 4])


def test_a_table_of_one_image_and_bad_tables_refused():
    labels = np.array([[1, 1, 2], [0, 2, 2]])
    table = cluster_table(labels, 3)  # one 2-D image, not one image per row
    assert table["image"] == [0, 0, 0]
    assert table["count"] == [2, 3, 0]
    for call, error, message in [
        (lambda: cluster_table(labels, 1), ValueError, "hold ids from 0 to 2, outside 0..n_c"),
        (lambda: cluster_table([labels, -labels], 2), ValueError, "labels of image 1 hold id"),
        (lambda: cluster_table(labels * 1.0, 2), TypeError, "labels must be integers, got dt"),
        (lambda: cluster_table(labels, 0), ValueError, "n_clusters must be >= 1, got 0"),
        (lambda: cluster_table([labels], 2, names=["a", "b"]), ValueError, "2 names for 1"),
    ]:
        with pytest.raises(error) as err:
            call()
        assert message in str(err.value)


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "message"),
    [
        ([data.astronaut(), data.camera()], {}, ValueError, "image 1 has shape (512, 512)"),
        ([data.camera(), util.img_as_float(data.camera())], {}, ValueError, "dtype float64"),
        ([data.camera()] * 2, {"mask": np.ones((512, 512))}, ValueError, "mask cannot be given"),
        ([data.camera()] * 2, {"n_clusters": 0}, ValueError, "n_clusters must be >= 1"),
    ],
)
def test_bad_sets_of_images_are_refused(images, kwargs, error, message):
    with pytest.raises(error) as err:
        kmeans(images, **{"n_clusters": 3, **kwargs})
    assert message in str(err.value)


def test_iter_kmeans_takes_one_image():
    with pytest.raises(TypeError, match="iter_kmeans takes one image"):
        iter_kmeans([data.camera(), data.camera()], 3)


def test_a_table_per_frame_of_a_stack():
    from napari_kmeanz import cluster_table as public_table

    stack = np.stack([data.camera(), data.camera()[::-1], data.camera() // 2])
    result = kmeans(stack, 3, spacing=(0, 1, 1), random_state=0)  # shared centres
    table = public_table(result.labels, 3)
    assert table["image"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(table["fraction"][:3], table["fraction"][3:6])  # flipped frame
    for frame in range(3):
        assert sum(table["count"][3 * frame : 3 * frame + 3]) == 512 * 512
