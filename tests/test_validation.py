"""Bad input gets a clear error naming the parameter and the value, before any work."""

import dask.array as da
import numpy as np
import pytest
from skimage import data

from napari_kmeanz import iter_kmeans, kmeans

IMAGE = data.astronaut()[::8, ::8]  # 64 x 64 x 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_clusters": 0}, ValueError, r"n_clusters must be >= 1, got 0"),
        ({"n_clusters": -3}, ValueError, r"n_clusters must be >= 1, got -3"),
        ({"n_clusters": 2.5}, TypeError, r"n_clusters must be an integer, got 2.5"),
        ({"n_clusters": True}, TypeError, r"n_clusters must be an integer, got True"),
        ({"n_clusters": 4097}, ValueError, r"n_clusters=4097 is larger than .* pixels \(4096\)"),
        ({"spatial_weight": -0.5}, ValueError, r"spatial_weight must be .*>= 0.0, got -0.5"),
        ({"spatial_weight": float("nan")}, ValueError, r"spatial_weight .* got nan"),
        ({"channel_axis": 3}, ValueError, r"channel_axis=3 is out of range .* 3 dimensions"),
        ({"channel_axis": -4}, ValueError, r"channel_axis=-4 is out of range"),
        ({"channel_axis": "last"}, ValueError, r"channel_axis must be .*got 'last'"),
        ({"init": "kmeans||"}, ValueError, r"init must be one of .* got 'kmeans\|\|'"),
        ({"init": np.zeros((3, 3))}, ValueError, r"init .* \(8, 3\), got shape \(3, 3\)"),
        (
            {"init": np.where(np.eye(8, 3) > 0, np.nan, 1.0)},
            ValueError,
            r"init as an array must be finite, got nan at \(0, 0\)",
        ),
        ({"max_iter": 0}, ValueError, r"max_iter must be >= 1, got 0"),
        ({"tol": -1e-3}, ValueError, r"tol must be .*>= 0.0, got -0.001"),
        ({"sample_size": 0}, ValueError, r"sample_size must be >= 1, got 0"),
        ({"color_space": "hsv"}, ValueError, r"color_space must be one of .* got .hsv."),
        ({"n_init": 0}, ValueError, r"n_init must be >= 1, got 0"),
        ({"random_state": "seed"}, TypeError, r"random_state must be an integer >= 0, a "),
        (
            {"random_state": np.random.RandomState(0)},
            TypeError,
            r"a numpy.random.Generator or None, got RandomState\(MT19937\)",
        ),
        ({"spacing": (1.0,)}, ValueError, r"spacing must hold 2 .* got \(1.0,\)"),
        ({"spacing": (1.0, -2.0)}, ValueError, r"spacing must hold 2 finite numbers >= 0.* -2.0"),
        ({"spacing": [np.float64(-1), np.float32(2)]}, ValueError, r"got \(-1.0, 2.0\)\.$"),
        ({"mask": np.ones((10, 10), bool)}, ValueError, r"mask has shape \(10, 10\).* \(64, 64\)"),
        ({"mask": np.zeros((64, 64), bool)}, ValueError, r"mask selects no pixel"),
        ({"alpha": True, "channel_axis": None}, ValueError, r"alpha=True needs a channel axis"),
        ({"alpha": "yes"}, TypeError, r"alpha must be True, False or None, got 'yes'"),
        ({"spacing": "ab"}, ValueError, r"spacing must hold 2 finite numbers .* got 'ab'"),
        ({"spacing": "12"}, ValueError, r"spacing must hold 2 .* got '12'"),
        ({"spacing": [1, None]}, ValueError, r"spacing must hold 2 .* got \[1, None\]"),
        ({"init": None}, TypeError, r"init must be one of .* or an array .* got None"),
        ({"spatial_weight": 1e200}, ValueError, r"spatial_weight must be <= 1e\+100.* 1e\+200"),
        ({"mask": np.full((64, 64), np.nan)}, ValueError, r"mask selects no pixel.*NaN"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    kwargs = {"n_clusters": 8, **kwargs}
    with pytest.raises(error, match=match):
        kmeans(IMAGE, **kwargs)
    # iter_kmeans checks its parameters when called, before the first pass
    with pytest.raises(error, match=match):
        iter_kmeans(IMAGE, **kwargs)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((8, 8), bool), TypeError, r"image has dtype bool"),
        (np.zeros((8, 8), complex), TypeError, r"image has complex dtype complex128"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, r"integer or float dtype, got dtype <U1"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, r"image is empty \(shape \(0, 5, 3\)\)"),
        (np.zeros((3,), np.uint8), ValueError, r"no spatial axis"),
    ],
)
def test_bad_images(image, error, match):
    channel_axis = 0 if image.ndim == 1 else "auto"
    with pytest.raises(error, match=match):
        kmeans(image, 2, channel_axis=channel_axis)


def test_every_pixel_masked_by_a_lazy_mask_or_nan():
    mask = da.zeros((64, 64), dtype=bool, chunks=32)
    with pytest.raises(ValueError, match="No pixel to cluster"):
        kmeans(IMAGE, 3, mask=mask)
    with pytest.raises(ValueError, match="No pixel to cluster"):
        kmeans(np.full((5, 5), np.nan), 2)


def test_more_clusters_than_unmasked_pixels():
    mask = np.zeros((64, 64), bool)
    mask[0, :5] = True
    with pytest.raises(ValueError, match=r"n_clusters=8 .* pixels to cluster \(5\)"):
        kmeans(IMAGE, 8, mask=mask)


def test_the_input_is_never_changed():
    image = IMAGE.copy()
    kmeans(image, 4, spatial_weight=1, random_state=0)
    np.testing.assert_array_equal(image, IMAGE)


def test_a_bad_callback_is_refused_before_any_work():
    with pytest.raises(TypeError, match=r"callback must be callable or None, got 5"):
        kmeans(IMAGE, 4, callback=5)


@pytest.mark.parametrize(
    ("scale", "match"),
    [
        (1e154, r"image values reach 6.3e\+155, beyond the 1e\+100"),
        (1e-160, r"image values span only 6.3e-159 \(below 1e-100\)"),
    ],
)
def test_extreme_magnitudes_are_refused_with_the_values_found(scale, match):
    image = np.arange(64.0).reshape(8, 8) * scale
    for spatial_weight in (0.0, 1.0):
        with pytest.raises(ValueError, match=match):
            kmeans(image, 2, spatial_weight=spatial_weight)


def test_position_features_beyond_float64_are_refused():
    image = np.arange(64.0).reshape(8, 8) * 1e60
    with pytest.raises(ValueError, match=r"spatial_weight=1e\+50 makes the position features"):
        kmeans(image, 2, spatial_weight=1e50)


def test_the_largest_and_smallest_accepted_magnitudes_cluster_correctly():
    base = np.repeat([0.0, 1.0, 10.0], 30).reshape(9, 10)
    expected = kmeans(base, 3, random_state=0).labels
    for scale in (1e90, 1e-90):
        result = kmeans(base * scale, 3, random_state=0)
        np.testing.assert_array_equal(result.labels, expected)
        assert np.isfinite(result.inertia)


def test_predict_refuses_images_that_do_not_fit_the_model():
    from napari_kmeanz import predict

    photo = data.astronaut()[::4, ::4]
    model = kmeans(photo, 4, random_state=0)
    with pytest.raises(ValueError, match=r"dtype float64.* model's dtype uint8 \(0..255\)"):
        predict(photo / 255.0, model)
    with pytest.raises(ValueError, match=r"dtype uint16.* model's dtype uint8"):
        predict(photo.astype(np.uint16) * 257, model)
    with pytest.raises(ValueError, match=r"image has 2 channels .* fitted on 3 channels"):
        predict(photo[..., :2], model)  # (alpha aside: RGBA and RGB go together)
    # float images of another precision are on the same scale
    float_model = kmeans(photo / 255.0, 4, random_state=0)
    np.testing.assert_array_equal(
        predict((photo / 255.0).astype(np.float32), float_model), float_model.labels
    )


def test_dask_arrays_of_unknown_chunk_sizes_are_refused_by_name():
    """A boolean index leaves a dask array's chunk sizes unknown (NaN): kmeans failed with
    "cannot convert float NaN to integer"; the image, mask and predict's image are named."""
    from napari_kmeanz import predict

    flat = da.from_array(IMAGE.reshape(-1, 3), chunks=(1000, 3))
    unknown = flat[flat[:, 0] >= 0]
    message = r"image is a dask array of unknown chunk sizes \(shape \(None, 3\)\); call image"
    with pytest.raises(ValueError, match=message):
        kmeans(unknown, 3)
    ones = da.ones(len(flat), dtype=bool, chunks=1000)
    with pytest.raises(ValueError, match=r"mask is a dask array of unknown chunk sizes"):
        kmeans(IMAGE.reshape(-1, 3), 3, mask=ones[ones])
    with pytest.raises(ValueError, match=message):
        predict(unknown, kmeans(IMAGE.reshape(-1, 3), 3, random_state=0))
