"""A model as a file: save, load, and the same labels as the model saved."""

import json

import dask.array as da
import numpy as np
import pytest
from skimage import data, util

from napari_kmeanz import kmeans, load, predict

CASES = {
    "rgb": lambda: (data.astronaut(), {"n_clusters": 6}),
    "5-D": lambda: (data.astronaut(), {"n_clusters": 6, "spatial_weight": 1.0}),
    "lab": lambda: (data.coffee(), {"n_clusters": 5, "color_space": "lab"}),
    "features": lambda: (
        util.img_as_float(data.camera()),
        {"n_clusters": 3, "sigma": 2.0, "features": ["gaussian", "std", "hessian"]},
    ),
    "int32 far from zero": lambda: (
        (data.camera().astype(np.int64) + 2**31 - 300).astype(np.int32),
        {"n_clusters": 4},
    ),
    "rgba, spacing": lambda: (
        np.dstack([data.chelsea(), np.full(data.chelsea().shape[:2], 200, np.uint8)]),
        {"n_clusters": 4, "spatial_weight": 0.5, "spacing": (2.0, 1.0)},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_loaded_model_labels_exactly_as_the_saved_one(case, tmp_path):
    image, options = CASES[case]()
    model = kmeans(image, random_state=0, **options)
    path = tmp_path / "model.json"
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]  # exactly there
    loaded = load(path)
    assert loaded.labels is None
    np.testing.assert_array_equal(loaded.centers, model.centers)
    np.testing.assert_array_equal(loaded.colors, model.colors)
    assert loaded.feature_space == model.feature_space
    np.testing.assert_array_equal(predict(image, loaded), model.labels)
    flipped = image[::-1].copy()
    np.testing.assert_array_equal(predict(flipped, loaded), predict(flipped, model))
    lazy = da.from_array(image, chunks=(100, *image.shape[1:]))
    np.testing.assert_array_equal(predict(lazy, loaded).compute(), model.labels)


def test_the_file_is_documented_json(tmp_path):
    model = kmeans(data.astronaut(), 3, random_state=0)
    model.save(tmp_path / "m.json")
    document = json.loads((tmp_path / "m.json").read_text())
    assert document["format"] == "napari-kmeanz model" and document["version"] == 1
    assert document["dtype"] == "uint8"
    assert np.array(document["centers"]).shape == (3, 3)
    assert document["layout"] == {"ndim": 3, "channel_axis": 2, "alpha": False}


def test_a_loaded_model_has_no_labels_to_recolor(tmp_path):
    model = kmeans(data.camera(), 3, random_state=0)
    model.save(tmp_path / "m.json")
    with pytest.raises(ValueError, match="has no labels: label an image with predict"):
        load(tmp_path / "m.json").recolor()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text[: len(text) // 2], "is not a napari-kmeanz model"),  # truncated
        (lambda text: "\x00\xff garbage", "is not a napari-kmeanz model"),
        (lambda text: text.replace('"version": 1', '"version": 2'), "format version 2"),
        (lambda text: text.replace("napari-kmeanz model", "something else"), "'format' is not"),
        (lambda text: text.replace('"centers"', '"centres"'), "it has no 'centers'"),
        (
            lambda text: text.replace('"n_channels": 3', '"n_channels": 4'),
            "its centres have shape",
        ),
        (lambda text: "[1, 2, 3]", "'format' is not"),
    ],
)
def test_bad_model_files_are_refused_saying_why(edit, message, tmp_path):
    path = tmp_path / "m.json"
    kmeans(data.astronaut(), 3, random_state=0).save(path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ValueError) as err:
        load(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_saving_to_a_folder_is_refused_and_writes_nothing(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    result = kmeans(data.camera()[::8, ::8], 3, random_state=0)
    with pytest.raises(IsADirectoryError, match="is a folder: give the model a file name"):
        result.save(folder)
    assert sorted(tmp_path.iterdir()) == [folder] and not any(folder.iterdir())
    with pytest.raises(IsADirectoryError, match="is a folder: give the model's file"):
        load(folder)


def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    result = kmeans(data.camera()[::8, ::8], 3, random_state=0)
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=f"no folder {str(missing)!r}") as err:
        result.save(missing / "model.json")
    assert "partial" not in str(err.value) and not missing.exists()


def test_predict_takes_the_images_own_channel_axis():
    """A model fitted on (Y, X, C) labels a (C, Y, X) array given its channel_axis (it was
    refused, with no way to say where the channels are); a wrong axis says which fits."""
    from napari_kmeanz import margins

    photo = data.astronaut()[::4, ::4]
    model = kmeans(photo, 4, random_state=0)
    first = np.moveaxis(photo, -1, 0)
    np.testing.assert_array_equal(predict(first, model, channel_axis=0), model.labels)
    np.testing.assert_array_equal(model.predict(first, channel_axis=-3), model.labels)
    np.testing.assert_allclose(margins(first, model, channel_axis=0), margins(photo, model))
    with pytest.raises(ValueError, match=r"128 channels along axis 2 .* give channel_axis=0"):
        predict(first, model)
    with pytest.raises(ValueError, match=r"channel_axis=3 is out of range for 3 dimensions"):
        predict(first, model, channel_axis=3)
    grey = kmeans(photo[..., 0], 3, random_state=0)
    with pytest.raises(ValueError, match=r"channel_axis=0: the model was fitted on grey"):
        predict(photo[..., 0], grey, channel_axis=0)


def test_a_model_that_does_not_fit_the_image_is_refused(tmp_path):
    kmeans(data.astronaut(), 3, random_state=0).save(tmp_path / "m.json")
    model = load(tmp_path / "m.json")
    with pytest.raises(ValueError, match="the model was fitted on 3 channels"):
        predict(data.camera()[..., None].repeat(2, axis=-1), model)
    with pytest.raises(ValueError, match="dtype float64, whose values are on another scale"):
        predict(util.img_as_float(data.astronaut()), model)
    # a colour picture for a model of grey images: not a stack of 512 frames of 512 x 3
    from napari_kmeanz import margins

    grey = kmeans(data.camera(), 3, random_state=0)
    for call in (predict, margins):
        with pytest.raises(ValueError, match=r"shape \(512, 512, 3\) looks like an RGB\(A\) p"):
            call(data.astronaut(), grey)
    frames = np.stack([data.camera()[:64, :64]] * 3)  # a grey stack (3 frames) still is one
    np.testing.assert_array_equal(predict(frames, grey)[2], predict(frames[2], grey))


def test_a_colour_model_labels_pictures_with_and_without_alpha():
    """Alpha is not a feature: a model of RGB photos labels an RGBA picture (its transparent
    pixels 0) and one of RGBA pictures an RGB photo, as a fit of either would."""
    photo = data.astronaut()
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0
    rgb_model = kmeans(photo, 4, random_state=0)
    labels = predict(rgba, rgb_model)
    assert (labels[:100] == 0).all()
    np.testing.assert_array_equal(labels[100:], rgb_model.labels[100:])
    rgba_model = kmeans(rgba, 4, random_state=0)
    np.testing.assert_array_equal(predict(rgba, rgba_model), rgba_model.labels)
    np.testing.assert_array_equal(predict(photo, rgba_model)[100:], rgba_model.labels[100:])
    with pytest.raises(ValueError, match="image has 2 channels along axis 2"):
        predict(photo[..., :2], rgb_model)


def test_a_model_labels_every_frame_of_a_stack(tmp_path):
    """A model of one image labels each frame of a stack (an axis more, in front) as that
    image alone: the same ids in every frame; lazily, frame by frame, for a dask stack."""
    from napari_kmeanz import margins

    frames = [data.astronaut(), data.astronaut()[::-1], data.astronaut()[:, ::-1]]
    fitted = kmeans(frames[0], 5, spatial_weight=0.5, sigma=1.0, random_state=0)
    fitted.save(tmp_path / "m.json")
    model = load(tmp_path / "m.json")
    stack = np.stack(frames)
    labels = predict(stack, model)
    assert labels.shape == stack.shape[:3]
    for frame, got in zip(frames, labels, strict=True):
        np.testing.assert_array_equal(got, predict(frame, model))
    np.testing.assert_array_equal(labels[0], fitted.labels)
    lazy = predict(da.from_array(stack, chunks=(1, 256, 512, 3)), model)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), labels)
    mask = np.ones(stack.shape[:3], bool)
    mask[2, :20] = False
    masked = predict(stack, model, mask=mask)
    assert (masked[2, :20] == 0).all() and (masked[:2] == labels[:2]).all()
    np.testing.assert_allclose(margins(stack, model)[1], margins(frames[1], model))
    with pytest.raises(ValueError, match="the model was fitted on an image with 3 dim"):
        predict(stack[None], model)  # two axes more: not frames
