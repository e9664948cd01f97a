"""Smoothed and texture features: what they compute, that they help, and that chunking and
predict leave them as they are."""

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage
from skimage import data, feature

from napari_kmeanz import _engine as engine
from napari_kmeanz import kmeans, predict

SIX = ["value", "gaussian", "gradient", "laplace", "std", "hessian"]


def adjusted_rand(truth, labels) -> float:
    """The adjusted Rand index of two labelings (Hubert and Arabie), by hand."""
    _, a = np.unique(np.ravel(truth), return_inverse=True)
    _, b = np.unique(np.ravel(labels), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return (x * (x - 1) / 2).sum()

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([a.size]))
    return float((index - expected) / ((rows + cols) / 2 - expected))


def three_classes(shape=(192, 192), noise=1.0, seed=0):
    """Three piecewise-constant classes (0, 1, 2: bands and a disc) plus Gaussian noise."""
    truth = np.zeros(shape, int)
    truth[:, shape[1] // 3 :] = 1
    truth[:, 2 * shape[1] // 3 :] = 2
    yy, xx = np.indices(shape)
    truth[(yy - shape[0] // 2) ** 2 + (xx - shape[1] // 5) ** 2 < (shape[0] // 6) ** 2] = 2
    return truth, truth + np.random.default_rng(seed).normal(0, noise, shape)


def test_smoothing_recovers_classes_at_snr_1():
    truth, image = three_classes()
    raw = kmeans(image, 3, random_state=0)
    smoothed = kmeans(image, 3, sigma=2, random_state=0)
    assert adjusted_rand(truth, raw.labels) < 0.3
    assert adjusted_rand(truth, smoothed.labels) >= 0.88
    # colours: the means of the smoothed values, close to the classes' levels
    np.testing.assert_allclose(np.sort(smoothed.colors[:, 0]), [0, 1, 2], atol=0.15)


def test_texture_separates_equal_means():
    """Two regions of the same mean and different variance: values alone cannot tell them
    apart, the local standard deviation can."""
    rng = np.random.default_rng(1)
    truth = np.zeros((160, 160), int)
    truth[:, 80:] = 1
    image = 100 + rng.normal(0, 1, truth.shape) * np.where(truth == 1, 12.0, 2.0)
    raw = kmeans(image, 2, random_state=0)
    texture = kmeans(image, 2, sigma=3, features=["std"], random_state=0)
    assert adjusted_rand(truth, raw.labels) < 0.2
    assert adjusted_rand(truth, texture.labels) >= 0.9
    # the values are there for the colours only (weight 0), 'std' weighs as the values do
    factor = texture.feature_space.factor
    assert factor[0] == 0.0 and factor[1] > 0


@pytest.mark.parametrize(
    ("kinds", "sigma"), [(None, 2.0), (SIX, 1.5), (["std", "hessian"], (1.0, 2.5))]
)
def test_same_labels_whatever_the_chunking(kinds, sigma):
    _, image = three_classes((150, 170), seed=2)
    whole = kmeans(image, 4, sigma=sigma, features=kinds, spatial_weight=0.3, random_state=0)
    # small chunks, a short last one (6 rows: joined to its neighbour), uneven ones
    for chunks in [(48, 170), (36, 40), ((100, 44, 6), (90, 80))]:
        lazy = kmeans(
            da.from_array(image, chunks=chunks), 4, sigma=sigma, features=kinds,
            spatial_weight=0.3, random_state=0,
        )  # fmt: skip
        np.testing.assert_array_equal(lazy.labels.compute(), whole.labels)
        np.testing.assert_allclose(lazy.inertia, whole.inertia, rtol=1e-10)
    np.testing.assert_array_equal(predict(image, whole), whole.labels)


def test_kept_columns_give_the_results_of_columns_computed_each_pass(monkeypatch, tmp_path):
    """A run keeps its chunks' filtered columns in a temporary folder between passes: the
    same results as computing them in every pass, and the folder is gone after the run,
    however it ends."""
    import tempfile

    from napari_kmeanz import Cancelled, iter_kmeans

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, image = three_classes((150, 170), seed=3)
    lazy = da.from_array(image, chunks=(48, 90))
    options = {"sigma": 1.5, "features": SIX, "spatial_weight": 0.3, "random_state": 0}
    stores = []
    real_store = engine.FeatureCache.store
    monkeypatch.setattr(engine.FeatureCache, "store",
                        lambda self, *a: stores.append(a[0]) or real_store(self, *a))  # fmt: skip
    kept = kmeans(lazy, 4, **options)
    # each of the 6 chunks (the 6 rows left join their neighbour) once; the folder removed
    assert len(stores) == 6 and not list(tmp_path.iterdir())
    monkeypatch.setattr("napari_kmeanz._features.FEATURE_CACHE_BYTES", 0)  # none kept
    again = kmeans(lazy, 4, **options)
    assert len(stores) == 6
    np.testing.assert_array_equal(kept.labels.compute(), again.labels.compute())
    assert kept.inertia_history.tolist() == again.inertia_history.tolist()
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))  # nowhere to write
    nowhere = kmeans(lazy, 4, **options)
    np.testing.assert_array_equal(nowhere.labels.compute(), again.labels.compute())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # a run stopped after its first round leaves no folder behind either
    states = iter_kmeans(lazy, 4, **options, max_iter=5)
    next(states)
    assert len(list(tmp_path.iterdir())) == 1
    states.close()
    assert not list(tmp_path.iterdir())
    stop = __import__("threading").Event()
    with pytest.raises(Cancelled):
        kmeans(lazy, 4, **options, cancel=stop, progress=lambda *_: stop.set())
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "options", "narrow"),
    [
        ("uint8 RGB", {}, True),
        ("uint8 RGB, six kinds", {"sigma": 1.0, "features": SIX}, True),
        ("uint16 grey, smoothed", {"sigma": 2.0}, True),
        ("Lab", {"color_space": "lab"}, False),  # computed values: float64
        ("float64 grey", {}, False),
    ],
)
def test_rows_held_as_float32_give_the_same_numbers(name, options, narrow, monkeypatch):
    """A pass builds its open tiles' rows as float32 where float32 holds them exactly: the
    same labels, centres and inertias to the bit as float64 rows; not where it cannot."""
    from napari_kmeanz._rows import TileRows

    image = data.coffee()[:200, :300]
    if "grey" in name:
        image = image[..., 1].astype(np.uint16) * 200 if "uint16" in name else image[..., 1] / 7
    chosen = []
    exact = TileRows.exact_in_float32
    monkeypatch.setattr(TileRows, "exact_in_float32",
                        lambda self: chosen.append(exact(self)) or chosen[-1])  # fmt: skip
    lazy = da.from_array(image, chunks=(100, 150, -1)[: image.ndim])
    run = {"spatial_weight": 0.5, "random_state": 0, "max_iter": 6, "tol": 0, **options}
    fast = kmeans(lazy, 6, **run)
    assert chosen and all(c == narrow for c in chosen)
    monkeypatch.setattr(TileRows, "exact_in_float32", lambda self: False)
    wide = kmeans(lazy, 6, **run)
    np.testing.assert_array_equal(fast.labels.compute(), wide.labels.compute())
    np.testing.assert_array_equal(fast.centers, wide.centers)
    assert fast.inertia_history.tolist() == wide.inertia_history.tolist()


def test_passes_with_kept_columns_read_the_image_once():
    """With the filters' columns kept, the rounds read them, not the image (nor its
    overlaps): a run of 5 rounds reads each chunk of a dask image once, and gives the
    labels of a numpy run."""
    reads = []

    def counted(block):
        reads.append(block.shape)
        return block

    grey = data.camera()[::2, ::2]
    meta = np.empty((0, 0), grey.dtype)
    image = da.from_array(grey, chunks=(128, 128)).map_blocks(counted, meta=meta)
    options = {"sigma": 1.5, "features": ["gaussian", "std"], "spatial_weight": 0.5,
               "max_iter": 5, "tol": 0, "random_state": 0}  # fmt: skip
    result = kmeans(image, 3, **options)
    assert result.n_iter >= 3  # (rounds until the assignment is stable)
    assert sorted(reads) == [(128, 128)] * 4  # the first reading only
    np.testing.assert_array_equal(np.asarray(result.labels), kmeans(grey, 3, **options).labels)


def test_a_chunk_whose_kept_columns_cannot_be_read_is_read_and_filtered_again():
    grey = data.camera()[::4, ::4].astype(np.float64)
    image = da.from_array(grey[..., None], chunks=(64, 50, 1))
    mask = da.from_array(grey > 60, chunks=(64, 50))
    filters = engine.Filters.of(SIX, (1.5, 1.5))
    cache = engine.FeatureCache.open(grey.size, filters.n_columns(1))
    try:
        source = engine.PixelSource(image, mask, False, filters=filters, cache=cache)
        first = source.scan()  # reads the image, keeps the columns
        kept = sorted(Path(cache.folder).iterdir())
        assert len(kept) == 2 * 6
        for path in kept:
            path.write_bytes(b"")  # there, but not a column file any more
        again = source.scan()  # reads the chunks left unread, and filters them again
    finally:
        cache.close()
    assert again[0] == first[0] == np.count_nonzero(grey > 60)
    np.testing.assert_array_equal(again[1], first[1])
    np.testing.assert_array_equal(again[2], first[2])


def test_columns_keep_the_precision_of_the_image():
    """The columns are kept as float32 where that holds the image's features (8- and 16-bit
    integers, float16), as float64 otherwise: int32 classes near 2**31 that differ by 100
    are not merged (as float32 they would round to the same number), and float32 values
    whose features overflow a float32 are not left out."""
    far = np.full((64, 80), 2**31 - 300, dtype=np.int32)
    far[:, 40:] += 100
    result = kmeans(far, 2, sigma=1.0, features=["gaussian", "std"], random_state=0)
    left, right = result.labels[:, :35], result.labels[:, 45:]
    assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1
    assert left[0, 0] != right[0, 0]
    low, high = np.sort(result.colors[:, 0])  # (the pixels at the edge take a little)
    assert abs(low - (2**31 - 300)) < 10 and abs(high - (2**31 - 200)) < 10
    narrow = kmeans(far.astype(np.uint16) // 2, 2, sigma=1.0, random_state=0)  # float32 kept
    assert narrow.centers.dtype == np.float64 and len(np.unique(narrow.labels)) == 2
    # float32 values near float32's largest: their Laplacian does not fit a float32, and no
    # pixel is lost for it
    huge = np.zeros((64, 64), np.float32)
    huge[:, 32:] = 3e38
    huge[::2, ::2] = 0
    result = kmeans(huge, 2, sigma=0.5, features=["value", "laplace"], random_state=0)
    assert (result.labels > 0).all()


@pytest.mark.parametrize("kinds", [None, ["gaussian", "gradient"], ["value", "std"]])
def test_features_of_values_far_from_zero_keep_their_differences(kinds, tmp_path):
    """Values far from zero against their spread (1e9 apart by 0.01) are shifted by an
    origin, with filters as without: the smoothed values (and "value") by it, the
    differences of values (derivatives, texture) as they are; the colours come back in the
    image's own units, and a saved model labels another image the same way. Unshifted, the
    distances' rounding (1e18 of squared magnitude) took every difference away: "too few
    distinct points"."""
    from napari_kmeanz import load

    far = 1e9 + np.where(np.arange(80) < 40, 0.0, 0.01)[None].repeat(64, 0)
    result = kmeans(far, 2, sigma=1.0, features=kinds, random_state=0)
    left, right = result.labels[:, :35], result.labels[:, 45:]
    assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1 and left[0, 0] != right[0, 0]
    low, high = np.sort(result.colors[:, 0]) - 1e9
    assert abs(low) < 1e-3 and abs(high - 0.01) < 1e-3
    result.save(tmp_path / "model.json")
    again = predict(far[:, ::-1], load(tmp_path / "model.json"))
    np.testing.assert_array_equal(np.asarray(again)[:, ::-1], result.labels)


def test_sigma_is_in_physical_units():
    """With a z step 4 times the pixel size, sigma=4 smooths one plane along z and four
    pixels in plane: the same as sigma (1, 4, 4) in pixels."""
    stack = np.stack([data.camera()[::4, ::4][:, i : i + 96] for i in range(0, 30, 3)])
    stack = stack + np.random.default_rng(0).normal(0, 20, stack.shape)
    physical = kmeans(stack, 3, sigma=4, spacing=(4, 1, 1), random_state=0)
    pixels = kmeans(stack, 3, sigma=(1, 4, 4), random_state=0)
    np.testing.assert_array_equal(physical.labels, pixels.labels)
    # a zero spacing (frames clustered together) is not smoothed along its axis
    frames = kmeans(stack, 3, sigma=4, spacing=(0, 1, 1), random_state=0)
    assert frames.feature_space.filters.sigma == (0.0, 4.0, 4.0)


def test_predict_applies_the_fitted_features_to_another_image():
    truth, image = three_classes(seed=3)
    model = kmeans(image[:96], 3, sigma=2, features=["gaussian", "std"], random_state=0)
    labels = predict(image, model)
    assert labels.shape == image.shape
    assert adjusted_rand(truth[110:], labels[110:]) > 0.8  # rows never seen when fitting
    np.testing.assert_array_equal(labels[:80], model.labels[:80])  # away from the fit's edge
    # at half the resolution, spacing 2: the same physical smoothing, 1 pixel there (over a
    # quarter as many pixels: noisier)
    half = predict(image[::2, ::2], model, spacing=(2, 2))
    assert adjusted_rand(truth[::2, ::2], half) > 0.7
    coarse = predict(image[::2, ::2], model)  # 2 pixels there: 4 units, smoother than fitted
    assert not np.array_equal(coarse, half)


def test_filters_compute_the_documented_features():
    """Each kind, on a chunk padded by its overlap, equals scipy's and scikit-image's filter
    on the whole image with mode='nearest' (the Hessian's finite differences inside the
    image: scikit-image's are one-sided at its edges, ours see the repeated edge pixel)."""
    image = data.camera()[100:220, 50:190].astype(np.float64)
    sigma = (1.5, 2.0)
    filters = engine.Filters.of(SIX, sigma)
    halo = filters.halo
    padded = np.pad(image, [(h, h) for h in halo], mode="edge")[..., None]
    columns = filters.apply(padded, halo)
    mode = {"mode": "nearest"}
    expected = [
        image,
        ndimage.gaussian_filter(image, sigma, **mode),
        ndimage.gaussian_gradient_magnitude(image, sigma, **mode),
        ndimage.gaussian_laplace(image, sigma, **mode),
    ]
    mean = ndimage.gaussian_filter(image, sigma, **mode)
    expected.append(
        np.sqrt(np.maximum(ndimage.gaussian_filter(image**2, sigma, **mode) - mean**2, 0))
    )
    hessian = feature.hessian_matrix(image, sigma, mode="nearest", use_gaussian_derivatives=False)
    expected.extend(feature.hessian_matrix_eigvals(hessian))
    assert columns.shape == (*image.shape, len(expected))
    for column, reference in enumerate(expected[:5]):
        np.testing.assert_array_equal(columns[..., column], reference, err_msg=SIX[column])
    inside = (slice(2, -2), slice(2, -2))
    for column, reference in enumerate(expected[5:], start=5):  # eigenvalues, largest first
        np.testing.assert_allclose(columns[inside][..., column], reference[inside], atol=1e-9)


def test_features_with_alpha_mask_and_nan():
    rgba = np.dstack([data.coffee()[::2, ::2], np.full((200, 300), 255, np.uint8)])
    rgba[:50, :, 3] = 0
    mask = np.ones((200, 300), bool)
    mask[:, :20] = False
    result = kmeans(rgba, 4, sigma=1, features=["gaussian", "std"], mask=mask, random_state=0)
    assert (result.labels[:50] == 0).all() and (result.labels[:, :20] == 0).all()
    assert (result.labels[60:, 30:] > 0).all()
    assert result.colors.shape == (4, 3)
    grey = data.camera()[::2, ::2].astype(np.float64)
    grey[100:110, 100:110] = np.nan  # missing: left out, and no neighbour lost with it
    result = kmeans(grey, 3, sigma=1, random_state=0)
    np.testing.assert_array_equal(result.labels == 0, np.isnan(grey))


@pytest.mark.parametrize("kinds", [None, SIX])
def test_missing_values_take_only_themselves_out(kinds):
    """A NaN or infinite pixel is left out (0), and only it: its neighbours' features come
    from their finite neighbours (normalised convolution), whatever chunk edge cuts the
    gaps; pixels whose windows hold no gap get the numbers they get without any."""
    grey = data.camera()[::4, ::4].astype(np.float64)
    missing = np.zeros(grey.shape, bool)
    missing[60:66, 60:66] = missing[0, :40] = missing[90, 5] = True
    gappy = np.where(missing, np.nan, grey)
    gappy[90, 5] = np.inf
    options = {"sigma": 1.5, "features": kinds, "spatial_weight": 0.5, "random_state": 0}
    result = kmeans(gappy, 4, **options)
    np.testing.assert_array_equal(result.labels == 0, missing)
    for chunks in [(61, 63), (40, 128), (33, 17)]:
        chunked = kmeans(da.from_array(gappy, chunks=chunks), 4, **options)
        np.testing.assert_array_equal(np.asarray(chunked.labels), result.labels)
    filters = engine.Filters.of(kinds or ["gaussian"], (1.5, 1.5))
    halo = filters.halo

    def columns(image):
        return filters.apply(np.pad(image, [(h, h) for h in halo], mode="edge")[..., None], halo)

    whole, holed = columns(grey), columns(gappy)
    far = ~ndimage.binary_dilation(missing, np.ones((2 * halo[0] + 1,) * 2, bool))
    np.testing.assert_array_equal(holed[far], whole[far])
    smooth = ndimage.gaussian_filter(grey, 1.5, mode="nearest", truncate=4.0)
    beside = ndimage.binary_dilation(missing, np.ones((5, 5), bool)) & ~missing
    assert np.isfinite(holed[beside]).all()
    close = np.abs(holed[..., SIX.index("gaussian") if kinds else 0] - smooth)[beside]
    assert np.median(close) < 0.1 * grey.std()  # the smoothed value of the finite ones


def test_no_derivative_along_an_axis_of_sigma_0():
    """sigma 0 along an axis (a time axis, spacing 0): each plane's features are its own,
    and a derivative kind never takes the value itself for a derivative along that axis."""
    rng = np.random.default_rng(0)
    stack = np.stack([data.camera()[::8, ::8], data.coins()[:64, :64]]).astype(np.float64)
    stack += rng.normal(0, 1, stack.shape)
    filters = engine.Filters.of(SIX, (0.0, 1.0, 1.0))
    assert filters.n_columns(1) == 7  # the Hessian along the two axes of the planes
    assert filters.halo[0] == 0  # no frame read around a frame's chunk
    options = {"sigma": (0, 1, 1), "features": SIX, "spatial_weight": 0.3, "random_state": 0}
    whole = kmeans(stack, 3, spacing=(0, 1, 1), **options)
    per_frame = kmeans(da.from_array(stack, chunks=(1, 40, 64)), 3, spacing=(0, 1, 1), **options)
    np.testing.assert_array_equal(np.asarray(per_frame.labels), whole.labels)
    halo = filters.halo
    padded = np.pad(stack, [(h, h) for h in halo], mode="edge")[..., None]
    columns = filters.apply(padded, halo)
    plane = engine.Filters.of(SIX, (1.0, 1.0))
    for t in range(2):
        own = np.pad(stack[t], [(h, h) for h in plane.halo], mode="edge")[..., None]
        np.testing.assert_allclose(columns[t], plane.apply(own, plane.halo), atol=1e-9)
    flat = np.full((3, 20, 20), 100.0)
    columns = filters.apply(np.pad(flat, [(h, h) for h in halo], mode="edge")[..., None], halo)
    gradient = columns[..., SIX.index("gradient")]
    np.testing.assert_allclose(gradient, 0, atol=1e-9)
    assert np.abs(columns[..., SIX.index("laplace")]).max() < 0.1  # scipy's truncated kernel


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sigma": -1}, "sigma must be finite and >= 0, got -1"),
        ({"sigma": float("nan")}, "sigma must be finite and >= 0"),
        ({"sigma": (1, 2, 3)}, "sigma must be a number or 2 numbers (one per spatial axis)"),
        ({"sigma": "2"}, "sigma must be a number or 2 numbers"),
        ({"sigma": 1, "features": ["value", "edges"]}, "features must be a non-empty sequence"),
        ({"sigma": 1, "features": []}, "features must be a non-empty sequence"),
        ({"features": ["std"]}, "'std' is taken at a Gaussian scale; give sigma"),
        ({"sigma": 1, "color_space": "lab"}, "color_space='lab' cannot be combined with sigma"),
        ({"sigma": 200}, "sigma is 200 pixels along axis 0, wider than the image's 64 pixels"),
    ],
)
def test_bad_sigma_and_features_are_refused_before_any_work(kwargs, message):
    image = np.zeros((64, 64, 3), np.uint8) if "color_space" in kwargs else np.zeros((64, 80))
    with pytest.raises(ValueError) as err:
        kmeans(image, 2, **kwargs)
    assert message in str(err.value)


def test_the_scan_of_filtered_columns_covers_the_clustered_pixels_only():
    """The value range the scan finds with filters: each column's minimum and maximum over
    the clustered pixels (not masked out, finite), whatever the chunks, with chunks whose
    tiles run past their edges and a chunk with no clustered pixel."""
    grey = data.camera()[::4, ::4].astype(np.float32)
    grey[10:20, 30:40] = np.nan
    mask = np.ones(grey.shape, bool)
    mask[:, :45] = False  # the first chunk of 45 columns has no clustered pixel
    mask[100:, 60:] = False
    filters = engine.Filters.of(SIX, (1.5, 1.5))
    halo = filters.halo
    padded = np.pad(grey.astype(np.float64), [(h, h) for h in halo], mode="edge")[..., None]
    columns = filters.apply(padded, halo)  # (float64 for a float32 image)
    clustered = mask & np.isfinite(grey)
    clustered &= np.isfinite(columns).all(axis=-1)
    expected = columns[clustered]
    for chunks in [(128, 45), (37, 45), (128, 128)]:
        image = da.from_array(grey[..., None], chunks=(*chunks, 1))
        source = engine.PixelSource(image, da.from_array(mask, chunks=chunks), False,
                                    filters=filters)  # fmt: skip
        n, lows, highs = source.scan()
        assert n == len(expected)
        np.testing.assert_array_equal(lows, expected.min(axis=0))
        np.testing.assert_array_equal(highs, expected.max(axis=0))


def test_cancel_acts_inside_a_chunks_filters(monkeypatch):
    """A chunk's filters take seconds on a large layer (4096^2 RGB, six kinds: cancelled
    runs went on for up to 10 s): Cancel acts between them, and no chunk's columns are
    finished after it. Here the run is cancelled from its second check in a dask worker
    (the first is the chunk task's own, as it starts), on one worker thread."""
    import threading

    import dask

    from napari_kmeanz import Cancelled

    class InsideTheTask:
        def __init__(self):
            self.calls = 0

        def is_set(self):
            if threading.current_thread() is threading.main_thread():
                return False
            self.calls += 1
            return self.calls > 1

    stores = []
    real_store = engine.FeatureCache.store
    monkeypatch.setattr(engine.FeatureCache, "store",
                        lambda self, *a: stores.append(a[0]) or real_store(self, *a))  # fmt: skip
    cancel = InsideTheTask()
    with dask.config.set(scheduler="threads", num_workers=1), pytest.raises(Cancelled):
        kmeans(data.camera(), 3, sigma=1.0, features=SIX, cancel=cancel, random_state=0)
    assert cancel.calls == 2 and not stores
