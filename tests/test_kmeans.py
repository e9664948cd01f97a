"""The engine on real images: against scikit-learn, across chunkings, in every image mode."""

import dask.array as da
import numpy as np
import pytest
from skimage import data
from sklearn.cluster import KMeans

from conftest import features, same_partition
from napari_kmeanz import iter_kmeans, kmeans, predict, recolor


def cluster_means(image_values, labels, k):
    """Mean value per cluster id 1..k, computed directly."""
    flat = labels.ravel()
    values = image_values.reshape(len(flat), -1).astype(np.float64)
    counts = np.bincount(flat, minlength=k + 1)[1:]
    sums = np.stack([np.bincount(flat, weights=v, minlength=k + 1)[1:] for v in values.T], axis=1)
    return sums / counts[:, None]


# -- against scikit-learn --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
@pytest.mark.parametrize("spatial_weight", [0.0, 1.0])
def test_same_partition_as_sklearn_from_same_init(name, spatial_weight):
    image = getattr(data, name)()
    k = 7
    probe = kmeans(image, k, spatial_weight=spatial_weight, max_iter=1, random_state=0)
    x = features(image, probe)
    init = x[np.random.default_rng(3).choice(len(x), k, replace=False)]

    ours = kmeans(image, k, spatial_weight=spatial_weight, init=init, max_iter=300, tol=0)
    theirs = KMeans(k, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(x)

    assert same_partition(ours.labels, theirs.labels_)
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=1e-4)
    assert ours.n_iter == theirs.n_iter_
    # the same centres, up to the order of the ids
    assert np.allclose(np.sort(ours.centers, axis=0), np.sort(theirs.cluster_centers_, axis=0))


@pytest.mark.parametrize(
    ("name", "k", "spatial_weight"),
    [("astronaut", 16, 0.0), ("coffee", 6, 0.0), ("chelsea", 16, 0.0), ("astronaut", 16, 1.0)],
)
def test_kmeanspp_inertia_no_worse_than_sklearn(name, k, spatial_weight):
    image = getattr(data, name)()
    seeds = range(3)
    ours = [kmeans(image, k, spatial_weight=spatial_weight, random_state=s) for s in seeds]
    x = features(image, ours[0])
    theirs = [KMeans(k, n_init=1, random_state=s).fit(x).inertia_ for s in seeds]
    assert np.mean([r.inertia for r in ours]) <= 1.01 * np.mean(theirs)


# -- determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_weight", [0.0, 1.0])  # weighted colours; a pixel sample
def test_a_sample_put_in_z_order_gives_the_same_result(spatial_weight, monkeypatch):
    """From ORDER_FROM_CLUSTERS clusters a sample is held in Z-order for its passes: the
    same labels, centres and inertias as in the points' own order (integer image: the sums
    are exact either way), with several seedings drawn from the subsample in turn."""
    from napari_kmeanz import _points, _seeding

    image = data.astronaut()[::2, ::2]
    run = {"spatial_weight": spatial_weight, "n_init": 2, "max_iter": 40, "random_state": 1}
    k = _points.ORDER_FROM_CLUSTERS + 20
    moved, drawn = [], []
    put, draw = _points.PointSource._put_in_order, _seeding._draw
    monkeypatch.setattr(_points.PointSource, "_put_in_order",
                        lambda self: moved.append(1) or put(self))  # fmt: skip
    monkeypatch.setattr(_seeding, "_draw", lambda *a: drawn.append(1) or draw(*a))
    ordered = kmeans(image, k, **run)
    assert moved and len(drawn) == 2  # the subsample put in order before the second seeding
    monkeypatch.setattr(_points, "ORDER_FROM_CLUSTERS", 10**9)
    plain = kmeans(image, k, **run)
    np.testing.assert_array_equal(ordered.labels, plain.labels)
    np.testing.assert_array_equal(ordered.centers, plain.centers)
    assert ordered.inertia_history.tolist() == plain.inertia_history.tolist()


@pytest.mark.parametrize("spatial_weight", [0.0, 0.5])
def test_same_seed_same_result_whatever_the_chunking(astronaut, spatial_weight):
    chunkings = [((128,) * 4, (128,) * 4, 3), ((200, 312), (77, 435), 3), ((512,), (64,) * 8, 3)]
    runs = [kmeans(astronaut, 9, spatial_weight=spatial_weight, random_state=42)]
    for chunks in chunkings:
        lazy = da.from_array(astronaut, chunks=chunks)
        runs.append(kmeans(lazy, 9, spatial_weight=spatial_weight, random_state=42))
    reference = runs[0]
    for run in runs[1:]:
        assert isinstance(run.labels, da.Array)
        np.testing.assert_array_equal(run.labels.compute(), reference.labels)
        np.testing.assert_allclose(run.centers, reference.centers, rtol=1e-12)
        np.testing.assert_allclose(run.colors, reference.colors, rtol=1e-12)
        assert run.inertia == pytest.approx(reference.inertia, rel=1e-12)
        assert run.n_iter == reference.n_iter


@pytest.mark.parametrize("spatial_weight", [0.0, 0.5])
def test_numpy_image_in_bands_gives_the_labels_of_one_chunk(
    astronaut, spatial_weight, monkeypatch
):
    """A numpy image is split into bands of rows, one a core, whose tasks write their labels
    into the result's array in place (through the colour table, or from the pass): the same
    labels as the image in one chunk."""
    whole = kmeans(astronaut, 9, spatial_weight=spatial_weight, random_state=42)
    monkeypatch.setattr("napari_kmeanz._params.NUMPY_CHUNK_PIXELS", 1 << 14)
    monkeypatch.setattr("napari_kmeanz._params.os.cpu_count", lambda: 5)  # 5 bands
    banded = kmeans(astronaut, 9, spatial_weight=spatial_weight, random_state=42)
    assert isinstance(banded.labels, np.ndarray)
    np.testing.assert_array_equal(banded.labels, whole.labels)
    np.testing.assert_allclose(banded.centers, whole.centers, rtol=1e-12)


def test_seed_reproducible_and_ids_ordered_by_brightness(coffee):
    first = kmeans(coffee, 6, random_state=7)
    second = kmeans(coffee, 6, random_state=np.random.default_rng(7))
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.centers, second.centers)
    brightness = first.colors.mean(axis=1)
    assert np.all(np.diff(brightness) > 0)
    assert set(np.unique(first.labels)) == set(range(1, 7))


# -- stopping and consistency ----------------------------------------------------------------


def test_tol_is_relative_inertia_decrease(astronaut):
    result = kmeans(astronaut, 8, spatial_weight=1.0, tol=1e-3, max_iter=200, random_state=0)
    history = result.inertia_history
    assert len(history) == result.n_iter
    assert result.converged
    gains = -np.diff(history) / history[:-1]
    # every round but the last improved by at least tol; the last by less (or centres froze)
    assert np.all(gains[:-1] >= 1e-3)
    assert gains[-1] < 1e-3 or np.array_equal(
        kmeans(astronaut, 8, spatial_weight=1.0, init=result.centers, max_iter=1).centers,
        result.centers,
    )


def test_unconverged_run_labels_match_returned_centres(astronaut):
    result = kmeans(astronaut, 12, spatial_weight=1.0, max_iter=2, tol=0, random_state=1)
    assert result.n_iter == 2
    assert not result.converged
    np.testing.assert_array_equal(predict(astronaut, result), result.labels)
    np.testing.assert_allclose(
        result.colors, cluster_means(astronaut, result.labels, 12), rtol=1e-10
    )
    np.testing.assert_array_equal(result.counts, np.bincount(result.labels.ravel())[1:])
    # the inertia is the one of those labels against those centres
    x = features(astronaut, result)
    d2 = ((x - result.centers[result.labels.ravel() - 1]) ** 2).sum()
    assert result.inertia == pytest.approx(d2, rel=1e-9)


def test_colour_fast_path_is_the_same_objective(coffee):
    """Integer colour-only runs cluster distinct colours by count: same result as all pixels."""
    k = 6
    x = coffee.reshape(-1, 3).astype(np.float64)
    init = x[np.random.default_rng(0).choice(len(x), k, replace=False)]
    fast = kmeans(coffee, k, init=init, tol=0, max_iter=300)
    every_pixel = kmeans(coffee.astype(np.float64), k, init=init, tol=0, max_iter=300)
    np.testing.assert_array_equal(fast.labels, every_pixel.labels)
    assert fast.inertia == pytest.approx(every_pixel.inertia, rel=1e-9)
    assert fast.n_iter == every_pixel.n_iter


def test_empty_cluster_is_relocated(coffee):
    x = coffee.reshape(-1, 3).astype(np.float64)
    init = np.vstack([x[:3], [[1e4, 1e4, 1e4]]])  # the last centre is far from every pixel
    result = kmeans(coffee, 4, init=init, max_iter=50)
    assert np.all(result.counts > 0)
    assert result.centers.max() < 256


def test_fewer_distinct_colours_than_clusters():
    image = np.zeros((40, 40, 3), np.uint8)
    image[:20] = (200, 10, 10)
    image[:, :10] = (10, 200, 10)
    with pytest.raises(ValueError, match=r"n_clusters=5 .* distinct points \(3\)"):
        kmeans(image, 5)
    assert kmeans(image, 3, random_state=0).counts.sum() == 1600


def test_iter_kmeans_yields_each_round_then_the_result(astronaut):
    states = list(iter_kmeans(astronaut, 5, max_iter=4, tol=0, random_state=0))
    assert [s.round for s in states[:-1]] == list(range(1, len(states)))
    assert states[-1].done and states[-1].result is not None
    assert not any(s.done for s in states[:-1])
    preview = states[0].labels()
    assert preview.shape == astronaut.shape[:2] and preview.max() == 5
    assert states[0].colors.shape == (5, 3)


def test_callback_can_stop_the_run(astronaut):
    seen = []

    class Stop(Exception):
        pass

    def callback(state):
        seen.append(state.round)
        if state.round == 2:
            raise Stop

    with pytest.raises(Stop):
        kmeans(astronaut, 5, spatial_weight=1, max_iter=50, tol=0, callback=callback)
    assert seen == [1, 2]


# -- image modes -----------------------------------------------------------------------------


def test_grey_image():
    image = data.camera()
    result = kmeans(image, 4, random_state=0)
    assert result.labels.shape == image.shape
    assert result.colors.shape == (4, 1)
    assert result.recolor().shape == image.shape and result.recolor().dtype == np.uint8


def test_rgba_alpha_is_not_a_feature_and_transparent_pixels_are_masked(astronaut):
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0
    rgba[100:200, :, 3] = 128  # semi-transparent pixels are still clustered
    result = kmeans(rgba, 6, random_state=0)
    assert result.colors.shape == (6, 3)
    assert np.all(result.labels[:100] == 0) and np.all(result.labels[100:] > 0)
    again = kmeans(astronaut, 6, random_state=0, mask=rgba[..., 3] > 0)
    np.testing.assert_array_equal(result.labels, again.labels)
    painted = result.recolor()
    assert painted.shape == rgba.shape and painted.dtype == np.uint8
    assert np.all(painted[:100, :, 3] == 0) and np.all(painted[100:, :, 3] == 255)


def test_four_channels_of_wide_integers_are_taken_for_alpha_with_a_warning(astronaut):
    """(Y, X, 4) uint16 is more often 4 fluorescence channels than RGBA: the default alpha
    then warns, and alpha=False clusters the 4 channels (a sparse 4th channel's zeros were
    silently left unclustered)."""
    four = np.dstack([astronaut, astronaut[..., :1] // 2]).astype(np.uint16) * 200
    four[:100, :, 3] = 0
    with pytest.warns(UserWarning, match=r"4 channels of this uint16 image .* alpha=False"):
        guessed = kmeans(four, 4, random_state=0)
    assert guessed.colors.shape == (4, 3) and np.all(guessed.labels[:100] == 0)
    values = kmeans(four, 4, random_state=0, alpha=False)  # no warning (warnings are errors)
    assert values.colors.shape == (4, 4) and np.all(values.labels > 0)
    kmeans(four.astype(np.uint8), 4, random_state=0)  # 8-bit RGBA: no warning
    kmeans(four / 65535.0, 4, random_state=0)  # float RGBA: no warning


def test_multichannel_with_channel_axis_first():
    ihc = data.immunohistochemistry()
    planar = np.moveaxis(ihc, -1, 0).copy()
    result = kmeans(planar, 5, channel_axis=0, random_state=0)
    reference = kmeans(ihc, 5, random_state=0)
    np.testing.assert_array_equal(result.labels, reference.labels)
    assert result.recolor().shape == planar.shape


def test_four_channels_with_explicit_axis_are_all_features():
    ihc = data.immunohistochemistry()
    four = np.dstack([ihc, ihc[..., :1]])
    result = kmeans(four, 4, channel_axis=-1, random_state=0)
    assert result.colors.shape == (4, 4)
    assert result.recolor().shape == four.shape


def test_volume_with_anisotropic_spacing():
    volume = np.stack([data.camera()[::4, ::4]] * 6)  # (6, 128, 128), z-steps 5x the xy pixel
    result = kmeans(volume, 4, spatial_weight=1.0, spacing=(5.0, 1.0, 1.0), random_state=0)
    assert result.labels.shape == volume.shape
    space = result.feature_space
    assert space.n_features == 4
    assert space.factor[0] == pytest.approx(5 * space.factor[1])
    # crossing the longest physical extent (6*5=30 along z, 128 in xy) costs the value range
    value_range = float(volume.max()) - float(volume.min())
    assert space.spatial_scale == pytest.approx(value_range / 128)


def test_spatial_weight_one_matches_the_original_scripts_scale(astronaut):
    """Position over 0..255 like each 8-bit colour channel, for a square image."""
    result = kmeans(astronaut, 4, spatial_weight=1.0, random_state=0)
    assert result.feature_space.factor[:2] == pytest.approx([255 / 512, 255 / 512])


@pytest.mark.parametrize(
    ("scale", "shift", "dtype"),
    [(257, 0, np.uint16), (1, -128, np.int16), (1, 0, np.float32), (1, 0.5, np.float64)],
)
def test_integer_and_float_dtypes_give_the_same_clusters(coffee, scale, shift, dtype):
    """An exact affine change of units moves the centres along and keeps the partition."""
    k = 5
    x = coffee.reshape(-1, 3).astype(np.float64)
    init = x[np.random.default_rng(0).choice(len(x), k, replace=False)]
    image = (coffee.astype(np.float64) * scale + shift).astype(dtype)
    result = kmeans(image, k, init=init * scale + shift, tol=0)
    reference = kmeans(coffee, k, init=init, tol=0)
    np.testing.assert_array_equal(result.labels, reference.labels)
    np.testing.assert_allclose(result.colors, reference.colors * scale + shift, rtol=1e-9)
    painted = result.recolor()
    assert painted.dtype == image.dtype and painted.shape == image.shape


def test_nan_pixels_are_not_clustered(coffee):
    image = coffee.astype(np.float64)
    image[10:20, 30:40, 1] = np.nan
    result = kmeans(image, 4, random_state=0)
    assert np.all(result.labels[10:20, 30:40] == 0)
    assert np.count_nonzero(result.labels == 0) == 100
    assert np.isfinite(result.colors).all()


def test_mask_as_dask_array(astronaut):
    mask = np.zeros(astronaut.shape[:2], bool)
    mask[100:400, 50:300] = True
    eager = kmeans(astronaut, 5, spatial_weight=1, mask=mask, random_state=0)
    image = da.from_array(astronaut, chunks=(100, 100, 3))
    lazy = kmeans(image, 5, spatial_weight=1, mask=da.from_array(mask, chunks=150), random_state=0)
    # the lazy labels start from the tiles the run found; predict finds them again
    np.testing.assert_array_equal(lazy.labels.compute(), eager.labels)
    np.testing.assert_array_equal(predict(image, lazy, mask=mask).compute(), eager.labels)
    assert np.all(eager.labels[~mask] == 0) and np.all(eager.labels[mask] > 0)


def test_predict_on_another_frame(astronaut):
    model = kmeans(astronaut[:256], 5, random_state=0)
    labels = predict(astronaut[256:], model)
    assert labels.shape == (256, 512) and labels.min() >= 1 and labels.max() <= 5
    lazy = predict(da.from_array(astronaut[256:], chunks=64), model)
    np.testing.assert_array_equal(lazy.compute(), labels)
    with pytest.raises(ValueError, match="channels"):
        predict(data.camera(), model)


def test_recolor():
    labels = np.array([[0, 1], [2, 2]])
    colors = np.array([[0.4, 10.6, 300.0], [-5.0, 127.5, 128.5]])
    out = recolor(labels, colors, dtype=np.uint8)
    np.testing.assert_array_equal(out[0, 1], [0, 11, 255])
    np.testing.assert_array_equal(out[1, 0], [0, 128, 128])
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    lazy = recolor(da.from_array(labels, chunks=1), colors, dtype=np.uint8)
    np.testing.assert_array_equal(lazy.compute(), out)
    assert recolor(labels, np.array([1.0, 2.0])).shape == (2, 2)
    with pytest.raises(ValueError, match=r"labels must lie in 0..2"):
        recolor(labels + 1, colors)
    with pytest.raises(ValueError, match="colors must be finite, got nan for cluster 2"):
        recolor(labels, np.array([1.0, np.nan]), dtype=np.uint8)  # (it painted 0, warning)
    with pytest.raises(TypeError, match="dtype must be an integer or float dtype, got bool"):
        recolor(labels, colors, dtype=bool)


def test_lab_colour_space(astronaut):
    from skimage import color

    result = kmeans(astronaut, 6, color_space="lab", random_state=0)
    lab = color.rgb2lab(astronaut).reshape(-1, 3)
    # the clusters are k-means clusters in Lab: every pixel is nearest to its own centre
    d2 = ((lab[:, None, :] - result.centers[None]) ** 2).sum(axis=2)
    nearest = d2.argmin(axis=1) + 1
    assert np.mean(nearest == result.labels.ravel()) > 0.9999
    # colours come back in the image's RGB units: the mean Lab of each cluster, as RGB
    mean_lab = np.stack([lab[result.labels.ravel() == i].mean(axis=0) for i in range(1, 7)])
    expected = color.lab2rgb(mean_lab[None])[0] * 255
    np.testing.assert_allclose(result.colors, expected, atol=0.05)
    assert result.recolor().dtype == np.uint8
    # the same clustering, computed chunk by chunk and with position features
    lazy = kmeans(da.from_array(astronaut, chunks=(200, 200, 3)), 6, color_space="lab",
                  random_state=0)  # fmt: skip
    np.testing.assert_array_equal(lazy.labels.compute(), result.labels)
    spatial = kmeans(astronaut, 6, color_space="lab", spatial_weight=1.0, random_state=0)
    assert spatial.feature_space.factor[0] == pytest.approx(100 / 512)
    np.testing.assert_array_equal(predict(astronaut, spatial), spatial.labels)
    with pytest.raises(ValueError, match=r"color_space='lab' needs an RGB image"):
        kmeans(data.camera(), 3, color_space="lab")


# -- every input, clustered like any other -------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32, np.uint32, np.int8])
@pytest.mark.parametrize("spatial_weight", [0.0, 1.0])
def test_integer_images_of_every_width_cluster_alike(dtype, spatial_weight):
    values = np.repeat(np.array([3, 40, 90, 120], dtype=np.int64), 16).reshape(8, 8)
    expected = kmeans(values.astype(np.uint8), 4, spatial_weight=spatial_weight, random_state=0)
    # values far from zero too (as float64, integers are exact up to 2**53)
    for offset in (0, min(np.iinfo(dtype).max - 127, 2**40)):
        image = (values + offset).astype(dtype) if offset else values.astype(dtype)
        result = kmeans(image, 4, spatial_weight=spatial_weight, random_state=0)
        np.testing.assert_array_equal(result.labels, expected.labels)
        np.testing.assert_allclose(result.colors[:, 0] - offset, expected.colors[:, 0])


def test_python_lists_and_aranges_cluster():
    labels = kmeans(np.arange(64).reshape(8, 8), 2, random_state=0).labels
    np.testing.assert_array_equal(labels, np.repeat([1, 2], 32).reshape(8, 8))
    np.testing.assert_array_equal(kmeans([[0, 1], [50, 51]], 2).labels, [[1, 1], [2, 2]])
    with pytest.warns(PendingDeprecationWarning):  # numpy's own, for making a matrix
        matrix = np.matrix(np.arange(64.0).reshape(8, 8))
    np.testing.assert_array_equal(kmeans(matrix, 2, random_state=0).labels, labels)


def test_pillow_images_cluster_as_the_colours_they_show():
    """A palette picture is its colours, not its palette indices; grey with alpha is grey
    with transparent pixels left out; several pictures are several images."""
    from PIL import Image

    photo = data.astronaut()
    palette = Image.fromarray(photo).convert("P", palette=Image.ADAPTIVE, colors=16)
    colours = np.asarray(palette.convert("RGB"))
    result = kmeans(palette, 4, random_state=0)
    np.testing.assert_array_equal(result.labels, kmeans(colours, 4, random_state=0).labels)
    assert result.colors.shape == (4, 3)
    grey = np.dstack([data.camera(), np.full((512, 512), 255, np.uint8)])
    grey[:, :50, 1] = 0
    labels = kmeans(Image.fromarray(grey, "LA"), 3, random_state=0).labels
    assert labels.shape == (512, 512) and (labels[:, :50] == 0).all() and labels[:, 50:].all()
    both = kmeans([palette, Image.fromarray(photo)], 4, random_state=0)
    assert [lab.shape for lab in both.labels] == [(512, 512)] * 2
    np.testing.assert_array_equal(predict(palette, both), both.labels[0])


def test_a_masked_array_leaves_its_masked_pixels_out():
    image = np.arange(64.0).reshape(8, 8)
    hidden = image < 32
    masked = np.ma.masked_array(image, mask=hidden)
    result = kmeans(masked, 2, random_state=0)
    assert np.all(result.labels[hidden] == 0) and np.all(result.labels[~hidden] > 0)
    same = kmeans(image, 2, mask=~hidden, random_state=0)  # (a seed: no chance in a test)
    np.testing.assert_array_equal(result.labels, same.labels)
    # with a mask given too, both apply; a channel masked masks its pixel
    rgb = np.ma.masked_array(np.dstack([image] * 3), mask=False)
    rgb.mask[0, 0, 1] = True
    both = kmeans(rgb, 2, mask=image >= 8, channel_axis=-1, random_state=0)
    assert both.labels[0, 0] == 0 and np.all(both.labels[:1] == 0) and both.labels[1, 0] > 0
    np.testing.assert_array_equal(predict(masked, result), np.where(hidden, 0, result.labels))
    with pytest.raises(ValueError, match="masked array whose mask covers every pixel"):
        kmeans(np.ma.masked_all((4, 4)), 2)


def test_nan_in_a_float_mask_selects_nothing():
    image = np.arange(64.0).reshape(8, 8)
    mask = np.ones((8, 8))
    mask[:2] = np.nan
    for m in (mask, da.from_array(mask, chunks=4)):
        result = kmeans(image, 2, mask=m, random_state=0)
        assert np.all(result.labels[:2] == 0) and np.all(result.labels[2:] > 0)


@pytest.mark.parametrize("shape", [(64, 64), (1024, 1024)])
def test_more_clusters_than_distinct_values_raises_at_every_size(shape):
    image = np.random.default_rng(0).integers(0, 3, shape).astype(np.float64)
    with pytest.raises(ValueError, match=r"n_clusters=5 is larger than the number of distinct"):
        kmeans(image, 5, random_state=0)
    with pytest.raises(ValueError, match=r"n_clusters=5 is larger than the number of distinct"):
        kmeans(da.from_array(image, chunks=256), 5, random_state=0)
    assert kmeans(image, 3, random_state=0).counts.min() > 0


def test_recolor_refuses_labels_outside_the_clusters_for_dask_too():
    colors = np.eye(3)
    for bad in ([[-1, 1], [2, 3]], [[0, 1], [2, 4]]):
        with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
            recolor(np.array(bad), colors)
        lazy = recolor(da.from_array(np.array(bad), chunks=1), colors)
        with pytest.raises(ValueError, match=r"labels must lie in 0..3"):
            lazy.compute()
    good = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(
        recolor(da.from_array(good, chunks=1), colors).compute(), recolor(good, colors)
    )


# -- cancel and progress --------------------------------------------------------------------


class CancelAfter:
    """A cancel flag that turns on after ``n`` looks: where a run looks is where it stops."""

    def __init__(self, n):
        self.n, self.looks = n, 0

    def is_set(self):
        self.looks += 1
        return self.looks > self.n


@pytest.mark.parametrize("lazy", [False, True])
def test_cancel_stops_inside_a_pass(astronaut, lazy):
    from napari_kmeanz import Cancelled

    image = da.from_array(astronaut, chunks=(256, 256, 3)) if lazy else astronaut
    init = kmeans(astronaut, 6, spatial_weight=1, random_state=0, max_iter=1).centers
    # with the centres given there is no seeding: the first looks are inside the first pass
    whole = CancelAfter(10**9)
    kmeans(image, 6, spatial_weight=1, init=init, max_iter=1, cancel=whole)
    looks_in_a_run = whole.looks
    cancel = CancelAfter(5)
    with pytest.raises(Cancelled):
        kmeans(image, 6, spatial_weight=1, init=init, max_iter=1, cancel=cancel)
    # a run looks tens of times; a cancelled one stops at the next look (one more per thread)
    assert looks_in_a_run > 20 and cancel.looks <= 5 + 4


def test_seeding_is_bounded_by_the_rounds_it_serves():
    from napari_kmeanz._seeding import SEED_POINTS_MIN, budget, plan

    # the default run of few clusters: the whole plan, whatever the image
    for n_pixels in (10_000, 10**8):
        bound = budget(100, n_pixels, 16)
        got = plan(65536, 16, "k-means++", 4, 8, bound)
        assert (got.n_sub, got.n_init, got.refine_rounds) == (SEED_POINTS_MIN, 4, 8)
    # many clusters, few rounds: a smaller subsample, then fewer seedings and refinements,
    # within the budget (to its floors)
    big = plan(65536, 1000, "k-means++", 4, 100, None)
    assert (big.n_sub, big.n_init, big.refine_rounds) == (65536, 4, 100)
    cases = ((6_291_456, (SEED_POINTS_MIN, 1, 3)), (10_000, (SEED_POINTS_MIN, 1, 1)))
    for n_pixels, expected in cases:
        bound = budget(3, n_pixels, 1000)
        got = plan(65536, 1000, "k-means++", 4, 100, bound)
        assert (got.n_sub, got.n_init, got.refine_rounds) == expected
    # an explicit plan is kept where it fits
    assert plan(65536, 1000, "random", 1, 3, budget(100, 10**9, 1000)).n_sub == 65536


def test_a_single_seeding_makes_no_pass_to_compare_itself(astronaut, monkeypatch):
    """Each of several seedings is weighed by one more pass over the subsample after its
    rounds, to keep the best; a single one has nothing to be compared with."""
    from napari_kmeanz import _points, _seeding

    monkeypatch.setattr(_seeding, "SEED_TOL", -1.0)  # every round runs
    passes = []
    real = _points.PointSource._pass

    def counted(self, *args, **kwargs):
        passes.append(len(self.rows))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(_points.PointSource, "_pass", counted)
    rng = np.random.default_rng(0)
    rows = astronaut[::4, ::4].reshape(-1, 3).astype(np.float64)
    sample = _seeding.Sample(rows, np.ones(len(rows)), False)
    for n_init in (1, 3):
        passes.clear()
        plan = _seeding.Plan(n_sub=4096, n_init=n_init, refine_rounds=2)
        _seeding.seed(sample, 8, "k-means++", rng, np.ones(3), plan)
        on_subsample = passes.count(4096)
        rounds = _seeding.SEED_ROUNDS
        assert on_subsample == (rounds if n_init == 1 else n_init * (rounds + 1))
        assert passes.count(len(rows)) == 2


def test_seeding_reports_progress_and_can_be_cancelled_there(astronaut):
    from napari_kmeanz import Cancelled

    steps = []
    kmeans(astronaut[::4, ::4], 50, random_state=0, n_init=2, progress=lambda *s: steps.append(s))
    assert steps and all(stage == "seeding" for stage, _, _ in steps)
    # two seedings of 50 centres and 10 rounds each, then the refinement's rounds
    (total,) = {total for _, _, total in steps}
    assert 2 * (50 + 10) < total <= 2 * (50 + 10) + 100
    done = [done for _, done, _ in steps]
    assert done == sorted(done) and done[-1] == total
    stop = __import__("threading").Event()

    def stop_at_first_step(*_):
        stop.set()

    with pytest.raises(Cancelled):
        kmeans(astronaut[::4, ::4], 50, random_state=0, cancel=stop, progress=stop_at_first_step)
    with pytest.raises(TypeError, match="cancel must have an is_set"):
        kmeans(astronaut, 2, cancel=True)
    with pytest.raises(TypeError, match="progress must be callable"):
        kmeans(astronaut, 2, progress=3)


@pytest.mark.parametrize("color_space", ["rgb", "lab"])
def test_states_give_their_labels_after_the_run_ends(astronaut, color_space):
    # the run's last labelling lets go of the distinct colours; labels asked for after it
    # decode them again from their codes
    image = astronaut[::4, ::4].copy()
    image[:5] = 0  # a mask leaves these pixels out
    mask = np.ones(image.shape[:2], bool)
    mask[:5] = False
    states, during = [], []
    for state in iter_kmeans(image, 6, color_space=color_space, mask=mask, random_state=0,
                             max_iter=3, tol=0):  # fmt: skip
        states.append(state)
        if not state.done:
            during.append(np.asarray(state.labels()))
    assert states[-1].result.labels is not None
    assert states[-1]._labeler.__self__.prepared.table.points.dropped
    for state, labels in zip(states, during, strict=False):
        np.testing.assert_array_equal(np.asarray(state.labels()), labels)
    np.testing.assert_array_equal(states[-1].labels(), states[-1].result.labels)
    assert (states[-1].labels()[:5] == 0).all()


@pytest.mark.parametrize("lazy", [False, True])
def test_each_rounds_labels_are_the_nearest_centres(astronaut, lazy):
    image = astronaut[::4, ::4]
    data_in = da.from_array(image, chunks=(64, 64, 3)) if lazy else image
    pixels = image.reshape(-1, 3).astype(np.float64)
    for state in iter_kmeans(data_in, 6, random_state=0, max_iter=4, tol=0):
        d2 = ((pixels[:, None, :] - state.centers[None]) ** 2).sum(axis=2)
        expected = (d2.argmin(axis=1) + 1).reshape(image.shape[:2])
        np.testing.assert_array_equal(np.asarray(state.labels()), expected)
