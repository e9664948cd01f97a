"""The "Clusters to segmentation" widget in a real viewer: clean, objects, mask, models."""

import dask.array as da
import numpy as np
import pytest
from skimage import data

from napari_kmeanz import clean, kmeans, load, margins, objects, predict
from test_plugin import PLUGIN, astronaut_run


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def open_segment_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Clusters to segmentation")
    return widget


def wait_for(qtbot, viewer, worker, name):
    """Wait for the worker's layer (a fast worker may finish before a signal is waited for)."""
    assert worker is not None
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=60_000)
    return viewer.layers[name]


def test_clean_objects_and_mask_of_a_clustering(viewer, qtbot):
    astronaut_run(viewer, qtbot)
    widget = open_segment_widget(viewer)
    clusters = viewer.layers["astronaut clusters"]
    assert widget.clusters.value is clusters
    assert list(widget.chosen.choices) == [1, 2, 3, 4]
    widget.min_size.value, widget.radius.value = 40, 1
    cleaned = wait_for(qtbot, viewer, widget.clean(), "astronaut clusters cleaned")
    np.testing.assert_array_equal(cleaned.data, clean(clusters.data, min_size=40, radius=1))
    assert cleaned.colormap is clusters.colormap or cleaned.colormap == clusters.colormap
    widget.chosen.value = [2]
    found = wait_for(qtbot, viewer, widget.objects(), "astronaut clusters objects")
    expected = objects(clusters.data, clusters=[2], image=data.astronaut())
    np.testing.assert_array_equal(found.data, expected.labels)
    np.testing.assert_allclose(found.features["area"], expected.table["area"])
    assert "intensity_mean-2" in found.features  # the source image's channels
    widget.chosen.value = []
    assert widget.mask() is None and "astronaut clusters mask of none" not in viewer.layers
    assert widget.status.value.startswith("Choose one cluster or more for the mask")
    widget.chosen.value = [2]
    mask = wait_for(qtbot, viewer, widget.mask(), "astronaut clusters mask of 2")
    np.testing.assert_array_equal(mask.data, (clusters.data == 2).astype(np.uint8))
    unsure = wait_for(qtbot, viewer, widget.uncertainty(), "astronaut clusters uncertainty")
    fitted = kmeans(data.astronaut(), 4, random_state=0, max_iter=30)
    np.testing.assert_allclose(unsure.data, 1 - margins(data.astronaut(), fitted), atol=1e-6)


def _click(viewer, qtbot, pos):
    """A left click on the canvas at ``pos`` (canvas pixels), through napari's canvas events;
    returns the world position napari saw."""
    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    canvas.events.mouse_press(pos=pos, modifiers=(), button=0)
    canvas.events.mouse_release(pos=pos, modifiers=(), button=0)
    qtbot.wait(20)
    return viewer.cursor.position


def test_pick_clusters_by_clicking_and_in_the_coloured_checklist(viewer, qtbot):
    astronaut_run(viewer, qtbot)
    widget = open_segment_widget(viewer)
    clusters = viewer.layers["astronaut clusters"]
    viewer.reset_view()
    # the checklist shows each cluster on its colour
    for row, rgba in enumerate(clusters.colormap.map(np.arange(1, 5))):
        color = widget.chosen.native.item(row).background().color()
        np.testing.assert_allclose(color.getRgbF()[:3], rgba[:3], atol=1 / 255)
    widget.chosen.value = []
    _click(viewer, qtbot, (5, 5))  # picking is off: nothing chosen
    assert list(widget.chosen.value) == []
    widget.pick.value = True
    size = viewer.window._qt_viewer.canvas._scene_canvas.size
    picked = []
    for pos in ((size[0] // 2, size[1] // 2), (size[0] // 3, size[1] // 2)):
        where = _click(viewer, qtbot, pos)
        picked.append(int(clusters.data[tuple(round(c) for c in where)]))
    expected = set(picked) if picked[0] != picked[1] else set()
    assert set(widget.chosen.value) == expected  # a second click on a chosen one drops it
    # a click toggles: the same place again takes its cluster out (or back in)
    _click(viewer, qtbot, (size[0] // 2, size[1] // 2))
    assert set(widget.chosen.value) == expected ^ {picked[0]}
    widget.pick.value = False
    assert widget._on_click not in viewer.mouse_drag_callbacks
    _click(viewer, qtbot, (size[0] // 2, size[1] // 2))
    assert set(widget.chosen.value) == expected ^ {picked[0]}  # off: clicks pick nothing


def test_save_a_model_and_apply_it_to_another_layer(viewer, qtbot, tmp_path):
    astronaut_run(viewer, qtbot)
    widget = open_segment_widget(viewer)
    path = tmp_path / "astronaut.json"
    widget.model_path.value = path
    widget.save_model()
    model = load(path)
    fitted = kmeans(data.astronaut(), 4, random_state=0, max_iter=30)
    np.testing.assert_array_equal(model.centers, fitted.centers)
    coffee = viewer.add_image(data.coffee(), name="coffee", rgb=True)
    widget.target.value = coffee
    labels = wait_for(qtbot, viewer, widget.apply_model(), "coffee clusters")
    np.testing.assert_array_equal(labels.data, predict(data.coffee(), fitted))
    # the applied layer carries its model: it can be cleaned and saved in turn
    assert labels in widget.clusters.choices
    # a dask layer gets lazy labels
    lazy = viewer.add_image(da.from_array(data.coffee(), chunks=(100, 600, 3)), name="lazy",
                            rgb=True)  # fmt: skip
    widget.target.value = lazy
    lazy_labels = wait_for(qtbot, viewer, widget.apply_model(), "lazy clusters")
    assert isinstance(lazy_labels.data, da.Array)
    np.testing.assert_array_equal(np.asarray(lazy_labels.data), labels.data)
    # every frame of a stack, lazily for a dask stack
    frames = da.stack([da.from_array(data.coffee())] * 3)
    stack = viewer.add_image(frames, name="frames", rgb=True)
    widget.target.value = stack
    stacked = wait_for(qtbot, viewer, widget.apply_model(), "frames clusters")
    assert isinstance(stacked.data, da.Array) and stacked.data.shape == (3, 400, 600)
    np.testing.assert_array_equal(np.asarray(stacked.data[2]), labels.data)
    # its objects, chunk by chunk: lazy too, the same as those of the labels in memory
    widget.clusters.value = lazy_labels
    widget.chosen.value = [2]
    found = wait_for(qtbot, viewer, widget.objects(), "lazy clusters objects")
    assert isinstance(found.data, da.Array)
    expected = objects(labels.data, clusters=[2], image=data.coffee())
    np.testing.assert_array_equal(np.asarray(found.data), expected.labels)
    np.testing.assert_allclose(found.features["intensity_mean-1"],
                               expected.table["intensity_mean-1"])  # fmt: skip
    # cleaned and masked lazily too (they were computed whole, in memory)
    widget.min_size.value, widget.radius.value = 30, 1
    cleaned = wait_for(qtbot, viewer, widget.clean(), "lazy clusters cleaned")
    assert isinstance(cleaned.data, da.Array)
    np.testing.assert_array_equal(np.asarray(cleaned.data),
                                  clean(labels.data, min_size=30, radius=1))  # fmt: skip
    masked = wait_for(qtbot, viewer, widget.mask(), "lazy clusters mask of 2")
    assert isinstance(masked.data, da.Array)
    np.testing.assert_array_equal(np.asarray(masked.data), labels.data == 2)
    unsure = wait_for(qtbot, viewer, widget.uncertainty(), "lazy clusters uncertainty")
    assert isinstance(unsure.data, da.Array)
    widget.chosen.value = [1, 2]
    assert widget.merge() is None  # lazy labels are not edited in memory: refused, said
    assert "computed lazily (dask)" in widget.status.value


def test_fit_one_model_on_several_layers(viewer, qtbot):
    from napari.utils.notifications import notification_manager

    widget = open_segment_widget(viewer)
    astronaut, coffee = data.astronaut(), data.coffee()
    viewer.add_image(astronaut, name="astronaut", rgb=True)
    viewer.add_image(coffee, name="coffee", rgb=True)
    lazy = viewer.add_image(da.from_array(coffee, chunks=(200, 300, 3)), name="lazy", rgb=True)
    widget.fit_layers.value = [viewer.layers["astronaut"], viewer.layers["coffee"], lazy]
    widget.fit_k.value, widget.fit_weight.value = 5, 0.5
    wait_for(qtbot, viewer, widget.fit_several(), "lazy clusters")
    expected = kmeans([astronaut, coffee, coffee], 5, spatial_weight=0.5, random_state=0,
                      max_iter=30)  # fmt: skip
    made = [viewer.layers[f"{name} clusters"] for name in ("astronaut", "coffee", "lazy")]
    for layer, labels in zip(made, expected.labels, strict=True):
        np.testing.assert_array_equal(np.asarray(layer.data), labels)
        # one model in every layer's metadata, and the same colours for the same ids
        np.testing.assert_array_equal(_layers_model(layer).centers, expected.centers)
        assert (
            layer.colormap.map(np.arange(1, 6)).tolist()
            == made[0].colormap.map(np.arange(1, 6)).tolist()
        )
    assert isinstance(made[2].data, da.Array)  # lazy labels for a dask layer
    # layers that cannot share a model are refused, before any work
    viewer.add_image(data.camera(), name="camera")
    widget.fit_layers.value = [viewer.layers["astronaut"], viewer.layers["camera"]]
    before = len(notification_manager.records)
    assert widget.fit_several() is None
    assert "cannot share a model" in widget.status.value
    assert len(notification_manager.records) == before + 1
    widget.fit_layers.value = []
    assert widget.fit_several() is None and "Choose the image layers" in widget.status.value


def _layers_model(layer):
    from napari_kmeanz._segment_widget import _model_of

    return _model_of(layer)


def test_a_model_that_does_not_fit_the_layer_is_refused_once(viewer, qtbot, tmp_path):
    """Found by the core in the worker: said in the status and one notification, not raised
    again in the event loop; a grey model is not applied to a colour picture as a stack of
    512 grey frames of 512 x 3 pixels (it was, silently)."""
    from napari.utils.notifications import notification_manager

    grey = tmp_path / "grey.json"
    kmeans(data.camera(), 3, random_state=0).save(grey)
    widget = open_segment_widget(viewer)
    widget.target.value = viewer.add_image(data.astronaut(), name="photo", rgb=True)
    widget.model_path.value = grey
    seen = len(notification_manager.records)
    assert widget.apply_model() is not None
    qtbot.waitUntil(lambda: "looks like an RGB(A) picture" in widget.status.value, timeout=60_000)
    messages = [str(n.message) for n in notification_manager.records[seen:]]
    assert len(messages) == 1 and "fitted on grey images" in messages[0]
    assert [layer.name for layer in viewer.layers] == ["photo"]


def test_bad_model_choices_are_refused(viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    widget = open_segment_widget(viewer)
    viewer.add_image(data.camera(), name="camera")
    seen = len(notification_manager.records)
    widget.model_path.value = tmp_path / "missing.json"
    assert widget.apply_model() is None
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    widget.model_path.value = broken
    assert widget.apply_model() is None
    messages = [str(n.message) for n in notification_manager.records[seen:]]
    assert any("missing.json" in m for m in messages)
    assert any("is not a napari-kmeanz model" in m for m in messages)
    assert len(viewer.layers) == 1


def test_merge_clusters_with_undo_and_a_merged_model(viewer, qtbot, tmp_path):
    astronaut_run(viewer, qtbot)
    widget = open_segment_widget(viewer)
    clusters = viewer.layers["astronaut clusters"]
    before = clusters.data.copy()
    widget.chosen.value = [2, 3]
    assert widget.merge() is not None
    qtbot.waitUntil(lambda: not (clusters.data == 3).any(), timeout=60_000)
    expected = np.where(before == 3, 2, before)
    np.testing.assert_array_equal(clusters.data, expected)
    # the model: both ids on the pixel-weighted mean centre, so it labels them 2
    widget.model_path.value = "/proc/merged.json"  # a folder no one can write to, root too
    widget.save_model()
    assert widget.status.value.startswith("Cannot write '/proc/merged.json': No such file")
    widget.model_path.value = tmp_path / "merged.json"
    widget.save_model()
    merged = load(tmp_path / "merged.json")
    n2, n3 = (before == 2).sum(), (before == 3).sum()
    fitted = kmeans(data.astronaut(), 4, random_state=0, max_iter=30)
    centre = (n2 * fitted.centers[1] + n3 * fitted.centers[2]) / (n2 + n3)
    np.testing.assert_allclose(merged.centers[1], centre)
    np.testing.assert_allclose(merged.centers[2], centre)
    relabelled = predict(data.astronaut(), merged)
    assert not (relabelled == 3).any()
    assert (relabelled == expected).mean() > 0.95  # boundary pixels may move to the new centre
    clusters.undo()  # napari's undo takes the merge back
    np.testing.assert_array_equal(clusters.data, before)


def cluster_frame_by_frame(viewer, qtbot, frames, **layer_options):
    """A stack clustered frame by frame (k=3) from the clustering widget: that widget and
    the "movie clusters" layer."""
    from test_plugin import open_widget, run_and_wait

    stack = viewer.add_image(frames, name="movie", **layer_options)
    kmeans_widget = open_widget(viewer)
    kmeans_widget.image.value = stack
    kmeans_widget.n_clusters.value = 3
    kmeans_widget.stack.value = "frame by frame (shared centres)"
    run_and_wait(qtbot, kmeans_widget)
    return kmeans_widget, viewer.layers["movie clusters"]


def test_fractions_over_the_frames_of_a_stack(viewer, qtbot):
    small = data.camera()[::2, ::2]
    frames = np.stack([small, small // 2, data.moon()[::2, ::2]])
    _, clusters = cluster_frame_by_frame(viewer, qtbot, frames)
    widget = open_segment_widget(viewer)
    widget.clusters.value = clusters
    assert widget.plot.native.isHidden()
    assert widget.fractions() is not None
    qtbot.waitUntil(lambda: not widget.plot.native.isHidden(), timeout=60_000)
    picture = np.asarray(widget.plot.value)
    assert picture.shape[:2] == (220, 360) and picture.std() > 5
    # a 2-D clustering has no frames: refused
    astronaut_run(viewer, qtbot)
    widget.clusters.value = viewer.layers["astronaut clusters"]
    assert widget.fractions() is None


def test_a_stack_clustered_frame_by_frame_is_cleaned_and_split_frame_by_frame(viewer, qtbot):
    small = data.camera()[::4, ::4]
    frames = np.stack([small, small, small])
    _, clusters = cluster_frame_by_frame(viewer, qtbot, frames, scale=(5.0, 0.5, 0.5),
                                         translate=(10, 0, 0))  # fmt: skip
    widget = open_segment_widget(viewer)
    widget.clusters.value = clusters
    widget.min_size.value, widget.radius.value = 30, 1
    cleaned = wait_for(qtbot, viewer, widget.clean(), "movie clusters cleaned")
    each = [clean(f, min_size=30, radius=1) for f in clusters.data]
    np.testing.assert_array_equal(cleaned.data, np.stack(each))
    widget.chosen.value = [2]
    found = wait_for(qtbot, viewer, widget.objects(), "movie clusters objects")
    per_frame = objects(clusters.data[0], clusters=[2]).labels.max()
    assert found.data.max() == 3 * per_frame  # the same frame three times: no object spans two
    frame_of = np.repeat([10.0, 15.0, 20.0], per_frame)  # translate + frame * scale: world
    np.testing.assert_allclose(found.features["centroid-0"], frame_of)
    area = np.bincount(found.data.ravel())[1:] * 0.25
    np.testing.assert_allclose(found.features["area"], area)


def test_a_time_lapse_of_volumes_is_split_into_objects_volume_by_volume(viewer, qtbot):
    """A (t, z, y, x) layer clustered frame by frame: objects of each volume on its own (a
    4-D labelling is not something skimage does); clustered as one 4-D block, a clear
    refusal in the widget instead of an error from deep inside."""
    from test_plugin import run_and_wait

    volume = np.stack([data.camera()[::8, ::8], data.camera()[::-8, ::8]])
    kmeans_widget, clusters = cluster_frame_by_frame(viewer, qtbot, np.stack([volume] * 3),
                                                     scale=(5.0, 2.0, 1.0, 1.0))  # fmt: skip
    widget = open_segment_widget(viewer)
    widget.clusters.value = clusters
    found = wait_for(qtbot, viewer, widget.objects(), "movie clusters objects")
    per_volume = objects(clusters.data[0]).labels.max()
    assert found.data.max() == 3 * per_volume  # the same volume three times
    np.testing.assert_allclose(found.features["centroid-0"], np.repeat([0.0, 5, 10], per_volume))
    viewer.layers.remove(found)
    kmeans_widget.stack.value = kmeans_widget.stack.choices[0]  # the whole 4-D block
    run_and_wait(qtbot, kmeans_widget)
    widget.clusters.value = viewer.layers["movie clusters"]
    assert widget.objects() is None  # no worker started
    assert "regions are found along at most 3 axes" in widget.status.value
    assert widget.clean() is None
    assert "movie clusters objects" not in viewer.layers


def test_a_flipped_layer_is_clustered_and_measured_as_its_pixels_are(viewer, qtbot):
    """A negative scale (napari's flip) only mirrors the display: the pixel size is its
    magnitude (it was refused as a negative spacing), and the objects' centroids are where
    napari shows them."""
    from test_plugin import open_widget, run_and_wait

    image = data.camera()[::2, ::2]
    flipped = viewer.add_image(image, name="flipped", scale=(-0.5, 2.0), translate=(100, 0))
    kmeans_widget = open_widget(viewer)
    kmeans_widget.image.value = flipped
    kmeans_widget.n_clusters.value = 3
    kmeans_widget.spatial_weight.value = 0.5
    kmeans_widget.sigma.value = 1.0
    run_and_wait(qtbot, kmeans_widget)
    clusters = viewer.layers["flipped clusters"]
    expected = kmeans(image, 3, spatial_weight=0.5, sigma=1.0, spacing=(0.5, 2.0),
                      random_state=0, max_iter=30)  # fmt: skip
    np.testing.assert_array_equal(clusters.data, expected.labels)
    np.testing.assert_allclose(clusters.scale, flipped.scale)
    widget = open_segment_widget(viewer)
    widget.clusters.value = clusters
    widget.chosen.value = [1]
    found = wait_for(qtbot, viewer, widget.objects(), "flipped clusters objects")
    plain = objects(expected.labels, clusters=[1], spacing=(0.5, 2.0))
    np.testing.assert_allclose(found.features["area"], plain.table["area"])
    pixels = np.stack([plain.table["centroid-0"] / 0.5, plain.table["centroid-1"] / 2.0], axis=1)
    world = np.array([flipped.data_to_world(p) for p in pixels])  # where napari shows them
    for axis in (0, 1):
        np.testing.assert_allclose(found.features[f"centroid-{axis}"], world[:, axis])
