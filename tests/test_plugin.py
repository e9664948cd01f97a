"""The napari plugin in a real viewer (under Xvfb): widget, layers, live rounds, cancel."""

import dask.array as da
import napari
import numpy as np
import pytest
from npe2 import PluginManager
from skimage import data

from napari_kmeanz import _layers, kmeans

PLUGIN, WIDGET = "napari-kmeanz", "K-means clustering"


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def open_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def run_and_wait(qtbot, widget, timeout=60_000):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    return worker


def astronaut_run(viewer, qtbot, n_clusters=4):
    """The astronaut sample clustered from the widget; returns the widget."""
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    widget.n_clusters.value = n_clusters
    run_and_wait(qtbot, widget)
    return widget


def test_widget_opens_by_display_name_and_follows_the_layers(viewer):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    assert widget.image.value is viewer.layers["astronaut"]
    cells = viewer.add_image(data.cell(), name="cells")
    assert widget.image.value is cells  # the new layer is active
    assert [layer.name for layer in widget.image.choices] == ["astronaut", "cells"]
    viewer.layers.selection.active = viewer.layers["astronaut"]
    assert widget.image.value is viewer.layers["astronaut"]
    viewer.layers.remove(cells)
    assert widget.image.choices == (viewer.layers["astronaut"],)


def test_run_adds_labels_and_recoloured_layers_aligned_with_the_source(viewer, qtbot):
    source = viewer.add_image(
        data.astronaut(),
        name="photo",
        rgb=True,
        scale=(0.5, 0.5),
        translate=(10.0, -4.0),
        rotate=30.0,
        axis_labels=("y", "x"),
        units=("um", "um"),
    )
    widget = open_widget(viewer)
    widget.n_clusters.value = 6
    run_and_wait(qtbot, widget)

    labels = viewer.layers["photo clusters"]
    recoloured = viewer.layers["photo recoloured"]
    assert isinstance(labels, napari.layers.Labels)
    assert isinstance(recoloured, napari.layers.Image)
    assert labels.data.shape == (512, 512) and recoloured.data.shape == (512, 512, 3)
    assert recoloured.rgb and recoloured.data.dtype == np.uint8
    for layer in (labels, recoloured):
        np.testing.assert_allclose(layer.scale, source.scale)
        np.testing.assert_allclose(layer.translate, source.translate)
        np.testing.assert_allclose(layer.rotate, source.rotate)
        np.testing.assert_allclose(layer.affine.affine_matrix, source.affine.affine_matrix)
        np.testing.assert_allclose(layer.data_to_world((5, 7)), source.data_to_world((5, 7)))
        assert tuple(layer.axis_labels) == ("y", "x")
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert set(np.unique(labels.data)) == set(range(1, 7))

    # the label colours are the recoloured image's colours
    for label in range(1, 7):
        pixel = np.argwhere(labels.data == label)[0]
        expected = recoloured.data[tuple(pixel)] / 255
        np.testing.assert_allclose(
            labels.colormap.map(label)[..., :3].ravel(), expected, atol=1e-6
        )

    # the features table: one row per cluster
    table = labels.features
    assert list(table["label"]) == list(range(1, 7))
    assert table["pixel_count"].sum() == 512 * 512
    assert table["fraction"].sum() == pytest.approx(1.0)
    reference = kmeans(data.astronaut(), 6, spacing=(0.5, 0.5), random_state=0, max_iter=30)
    np.testing.assert_allclose(table[["mean_R", "mean_G", "mean_B"]], reference.colors)
    # centroids are in world coordinates: where the source shows those pixels
    centroids = reference.centroids()
    world = np.array([source.data_to_world(c) for c in centroids])
    np.testing.assert_allclose(table[["centroid_y", "centroid_x"]], world, atol=1e-6)
    meta = labels.metadata["napari-kmeanz"]
    assert meta["source"] == "photo" and len(meta["inertia_history"]) == meta["n_iter"]
    assert "photo" in viewer.layers and viewer.layers["photo"].data is source.data


def test_running_again_updates_the_layers(viewer, qtbot):
    widget = astronaut_run(viewer, qtbot)
    first = viewer.layers["astronaut clusters"]
    assert len(viewer.layers) == 3
    widget.image.value = viewer.layers["astronaut"]
    widget.n_clusters.value = 7
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == 3
    assert viewer.layers["astronaut clusters"] is first
    assert first.data.max() == 7


def test_layers_update_live_after_every_round(viewer, qtbot):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    widget.spatial_weight.value = 1.0
    widget.tol.value = 0.0
    widget.max_iter.value = 4
    rounds_seen, shown = [], []

    def on_round(update):
        state = getattr(update, "state", None)
        if state is not None and not state.done:
            rounds_seen.append(state.round)

    def on_data(event):  # what the labels layer shows, each time its data is set
        meta = event.source.metadata["napari-kmeanz"]
        shown.append(meta.get("round", "final"))

    def on_inserted(event):
        if event.value.name == "astronaut clusters":
            on_data(type("Event", (), {"source": event.value}))
            event.value.events.data.connect(on_data)

    viewer.layers.events.inserted.connect(on_inserted)
    worker = widget.run()
    worker.yielded.connect(on_round)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert rounds_seen == [1, 2, 3, 4]
    # previews in order, the newest whenever the screen had caught up, then the result
    assert shown[0] == 1 and shown[-1] == "final" and shown[:-1] == sorted(set(shown[:-1]))
    assert viewer.layers["astronaut clusters"].metadata["napari-kmeanz"]["n_iter"] == 4


def test_cancel_keeps_the_last_round_shown_labelled_as_such(viewer, qtbot):
    viewer.add_image(data.retina(), name="retina", rgb=True)
    widget = open_widget(viewer)
    widget.spatial_weight.value = 1.0
    widget.n_clusters.value = 20
    widget.tol.value = 0.0
    widget.max_iter.value = 500
    worker = widget.run()
    rounds = []
    worker.yielded.connect(
        lambda update: rounds.append(update.state.round) if hasattr(update, "state") else None
    )
    qtbot.waitUntil(lambda: "retina clusters" in viewer.layers, timeout=60_000)  # a preview
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert len(rounds) < 500 and widget.status.value.startswith("cancelled")
    labels = viewer.layers["retina clusters"]
    assert labels.data.shape == (1411, 1411) and labels.data.min() >= 1
    shown = labels.metadata["napari-kmeanz"]["round"]
    assert f"showing round {shown} (not a finished result)" in widget.status.value
    assert labels.features.empty  # no table of a finished run beside a preview
    assert widget.compression.value == "" and not widget.save_button.enabled
    assert widget.run_button.enabled


def test_cancel_acts_during_seeding_and_seeding_shows_progress(viewer, qtbot):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    widget.n_clusters.value = 1000  # seeding alone takes seconds
    worker = widget.run()
    updates = []
    worker.yielded.connect(updates.append)
    qtbot.waitUntil(lambda: widget.status.value.startswith("seeding"), timeout=60_000)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert not any(hasattr(u, "state") for u in updates)  # stopped before round 1
    assert widget.status.value == "cancelled: nothing shown (not a finished result)"
    assert [layer.name for layer in viewer.layers] == ["astronaut"]


def test_lab_colour_space_from_the_widget(viewer, qtbot):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    # hidden or not by the widget itself (the test viewer is never shown on screen)
    assert not widget.color_space.native.isHidden()  # an RGB layer: a colour space to pick
    grey = viewer.add_image(data.camera(), name="camera")
    widget.image.value = grey
    assert widget.color_space.native.isHidden()  # a grey layer: none
    widget.image.value = viewer.layers["astronaut"]
    assert not widget.color_space.native.isHidden()
    widget.color_space.value = "lab"
    widget.n_clusters.value = 5
    run_and_wait(qtbot, widget)
    labels = viewer.layers["astronaut clusters"]
    assert labels.metadata["napari-kmeanz"]["parameters"]["color_space"] == "lab"
    expected = kmeans(data.astronaut(), 5, color_space="lab", random_state=0, max_iter=30)
    np.testing.assert_array_equal(labels.data, expected.labels)


def test_widget_defaults_are_the_documented_ones(viewer):
    from napari_kmeanz import _defaults

    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    assert widget.n_clusters.value == _defaults.WIDGET["n_clusters"]
    assert widget.max_iter.value == _defaults.WIDGET["max_iter"]
    job = widget.job()
    assert job.kwargs["n_clusters"] == _defaults.WIDGET["n_clusters"]
    assert job.kwargs["max_iter"] == _defaults.WIDGET["max_iter"]


def test_smoothing_and_features_from_the_widget(viewer, qtbot):
    noisy = data.camera()[::2, ::2] + np.random.default_rng(0).normal(0, 40, (256, 256))
    layer = viewer.add_image(noisy, name="noisy", scale=(2.0, 2.0))
    widget = open_widget(viewer)
    widget.image.value = layer
    widget.n_clusters.value = 3
    widget.sigma.value = 4.0  # world units: 2 pixels of this layer
    widget.features.value = ["gaussian", "std"]
    run_and_wait(qtbot, widget)
    parameters = viewer.layers["noisy clusters"].metadata["napari-kmeanz"]["parameters"]
    assert parameters["sigma"] == 4.0 and parameters["features"] == ["gaussian", "std"]
    expected = kmeans(noisy, 3, sigma=2, features=["gaussian", "std"], random_state=0, max_iter=30)
    np.testing.assert_array_equal(viewer.layers["noisy clusters"].data, expected.labels)


def test_a_layer_with_missing_values_smoothed_from_the_widget(viewer, qtbot):
    """A float layer with NaN holes (a registered or stitched image): only the holes stay
    unlabelled, with sigma, and the recoloured layer has no NaN where the source has one."""
    gappy = data.camera()[::2, ::2].astype(np.float32)
    gappy[:30, :30] = gappy[120:125, 200:203] = np.nan
    layer = viewer.add_image(gappy, name="gappy")
    widget = open_widget(viewer)
    widget.image.value = layer
    widget.n_clusters.value = 3
    widget.sigma.value = 2.0
    run_and_wait(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["gappy clusters"].data == 0, np.isnan(gappy))
    recoloured = np.asarray(viewer.layers["gappy recoloured"].data)
    assert np.isfinite(recoloured[~np.isnan(gappy)]).all()
    assert np.isnan(layer.data).sum() == 30 * 30 + 15  # the source as it was


def test_same_footing_button(viewer):
    widget = open_widget(viewer)
    widget.same_footing.changed.emit(True)
    assert widget.spatial_weight.value == 1.0
    assert widget.tol.value == pytest.approx(1e-4)


@pytest.mark.parametrize(
    "setup",
    ["no image", "mask of another shape", "more clusters than pixels"],
)
def test_bad_choices_notify_and_change_nothing(viewer, setup):
    widget = open_widget(viewer)
    if setup != "no image":
        viewer.add_image(np.arange(16, dtype=np.uint8).reshape(4, 4), name="tiny")
    if setup == "mask of another shape":
        widget.mask.value = viewer.add_labels(np.ones((5, 5), np.uint8), name="mask")
    if setup == "more clusters than pixels":
        widget.n_clusters.value = 20
    from napari.utils.notifications import notification_manager

    before = [(layer.name, id(layer.data)) for layer in viewer.layers]
    seen = len(notification_manager.records)
    assert widget.run() is None
    assert [(layer.name, id(layer.data)) for layer in viewer.layers] == before
    assert widget.run_button.enabled
    messages = [str(n.message) for n in notification_manager.records[seen:]]
    expected = {
        "no image": "No image layer",
        "mask of another shape": "has shape (5, 5)",
        "more clusters than pixels": "n_clusters=20 is larger than the number of pixels (16)",
    }[setup]
    assert any(expected in m for m in messages), messages


def test_an_rgb_image_takes_no_channel_partners(viewer, qtbot):
    """Grey layers of one shape are offered as more channels of each other; an RGB layer is
    offered none, and partners chosen for a grey layer are dropped when the image becomes an
    RGB one: the run clusters the RGB colours alone."""
    camera = data.camera()
    first = viewer.add_image(camera, name="first")
    second = viewer.add_image(camera[::-1].copy(), name="second")
    rgb = viewer.add_image(data.astronaut(), name="rgb", rgb=True)
    widget = open_widget(viewer)
    widget.image.value = first
    assert list(widget.channels.choices) == [second]
    widget.channels.value = [second]
    assert not widget.channels.native.isHidden()
    widget.image.value = rgb
    assert widget.channels.choices == () and widget.channels.native.isHidden()
    widget.n_clusters.value = 4
    run_and_wait(qtbot, widget)
    expected = kmeans(data.astronaut(), 4, random_state=0, max_iter=30)
    np.testing.assert_array_equal(viewer.layers["rgb clusters"].data, expected.labels)


def test_make_job_refuses_channels_that_do_not_go_together(viewer):
    rgb = viewer.add_image(data.astronaut(), name="rgb", rgb=True)
    grey = viewer.add_image(data.astronaut()[..., 0], name="grey")
    with pytest.raises(ValueError, match="single-channel"):
        _layers.make_job(rgb, channel_layers=[grey])
    with pytest.raises(ValueError, match="single-channel"):
        _layers.make_job(grey, channel_layers=[rgb])
    # channels on other scales: one would weigh next to nothing (it was stacked as floats)
    ratio = viewer.add_image(data.astronaut()[..., 1] / 255.0, name="ratio")
    with pytest.raises(ValueError, match="'ratio' holds float64 values, 'grey' uint8: their"):
        _layers.make_job(grey, channel_layers=[ratio])


def test_typed_commands_through_npe2():
    pm = PluginManager.instance()
    image = data.coffee()
    labels = pm.get_command("napari-kmeanz.cluster_labels").exec(
        args=(image,), kwargs={"n_clusters": 5}
    )
    assert labels.shape == image.shape[:2] and labels.max() == 5
    recoloured = pm.get_command("napari-kmeanz.recolored_image").exec(
        args=(image,), kwargs={"n_clusters": 5}
    )
    assert recoloured.shape == image.shape and recoloured.dtype == np.uint8
    assert len(np.unique(recoloured.reshape(-1, 3), axis=0)) == 5


def test_plot_compression_and_palette_png_from_napari(viewer, qtbot, tmp_path):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    widget.n_clusters.value = 16
    assert not widget.save_button.enabled
    run_and_wait(qtbot, widget)
    assert np.asarray(widget.plot.value).std() > 5  # the inertia-over-rounds plot
    assert "6.0x smaller than raw" in widget.compression.value  # 4 bits + palette vs 24
    path = widget.save_palette(tmp_path / "astronaut_palette.png")
    from PIL import Image

    with Image.open(path) as saved:
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.asarray(saved), viewer.layers["astronaut clusters"].data)


def test_k_sweep_adds_a_layer_with_a_slider_over_k(viewer, qtbot):
    viewer.add_image(data.coffee()[::2, ::2], name="coffee", rgb=True, translate=(5, 5))
    widget = open_widget(viewer)
    widget.sweep_from.value, widget.sweep_to.value = 2, 6
    widget.sweep()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    sweep = viewer.layers["coffee k sweep"]
    # frame k is k: the slider counts k (the frames below 2 are lazy zeros)
    assert sweep.data.shape == (7, 200, 300, 3) and sweep.rgb and sweep.data.dtype == np.uint8
    assert sweep.axis_labels[0] == "k" and sweep.data_to_world((4, 0, 0))[0] == 4
    assert not np.asarray(sweep.data[:2]).any() and np.asarray(sweep.data[2]).std() > 5
    suggested = int(widget.use_suggested.text.rsplit(" ", 1)[1])
    assert widget.use_suggested.native.isVisibleTo(widget.native)
    assert viewer.dims.current_step[0] == suggested
    widget.use_suggested.changed.emit(True)
    assert widget.n_clusters.value == suggested
    assert np.all(np.diff(sweep.metadata["napari-kmeanz"]["inertia"]) < 0)
    assert "suggested k" in widget.status.value
    assert np.asarray(widget.plot.value).shape == (220, 360, 3)  # the elbow plot


def test_a_sweep_past_the_distinct_values_ends_there_with_its_results(viewer, qtbot):
    """k = 4..9 over 6 distinct values: the sweep layer and the elbow of k = 4..6, and the
    status says where it stopped (the whole sweep failed, showing nothing)."""
    viewer.add_image((data.camera()[::4, ::4] // 43).astype(np.uint8), name="steps")
    widget = open_widget(viewer)
    widget.sweep_from.value, widget.sweep_to.value = 4, 9
    widget.sweep()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    sweep = viewer.layers["steps k sweep"]
    assert sweep.data.shape[0] == 7  # frames 0..6: the slider counts k
    assert sweep.metadata["napari-kmeanz"]["k"] == [4, 5, 6]
    assert widget.status.value.endswith("stopped at k=6, as many as the distinct values")


def test_bad_sweep_range_changes_nothing(viewer):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    widget.sweep_from.value, widget.sweep_to.value = 9, 3
    assert widget.sweep() is None and len(viewer.layers) == 1


@pytest.mark.parametrize("key", ["astronaut", "immunohistochemistry", "cells"])
def test_sample_data(viewer, key):
    viewer.open_sample(PLUGIN, key)
    assert viewer.layers[-1].data.size > 0


def test_screenshot_of_the_results_is_not_blank(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    run_and_wait(qtbot, widget)
    viewer.layers["astronaut recoloured"].visible = False
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 10


# -- image kinds, through the adapter -----------------------------------------------------


def finish(job):
    return list(job.states())[-1].result


def test_grey_layer(viewer):
    layer = viewer.add_image(data.camera(), name="camera", contrast_limits=(0, 255))
    job = _layers.make_job(layer, n_clusters=3)
    tuples = _layers.result_layers(job, finish(job))
    added = _layers.apply_layers(viewer, tuples)
    assert [a.name for a in added] == ["camera clusters", "camera recoloured"]
    assert added[1].data.shape == (512, 512) and added[1].data.dtype == np.uint8
    grey = added[0].colormap.map(np.array([1, 2, 3]))[:, :3]
    assert np.all(np.diff(grey[:, 0]) > 0) and np.allclose(grey[:, 0], grey[:, 1])


def test_rgba_layer_transparent_pixels_stay_out(viewer):
    rgba = np.dstack([data.astronaut(), np.full((512, 512), 255, np.uint8)])
    rgba[:64, :, 3] = 0
    layer = viewer.add_image(rgba, name="rgba", rgb=True)
    job = _layers.make_job(layer, n_clusters=4)
    labels, recoloured = _layers.apply_layers(viewer, _layers.result_layers(job, finish(job)))
    assert np.all(labels.data[:64] == 0) and np.all(labels.data[64:] > 0)
    assert recoloured.data.shape == (512, 512, 4) and np.all(recoloured.data[:64, :, 3] == 0)


def test_single_channel_layers_clustered_together(viewer, qtbot):
    ihc = data.immunohistochemistry()
    for channel, colormap in enumerate(["red", "green", "blue"]):
        viewer.add_image(
            ihc[..., channel], name=f"ch{channel}", colormap=colormap, blending="additive"
        )
    widget = open_widget(viewer)
    widget.image.value = viewer.layers["ch0"]
    assert [layer.name for layer in widget.channels.choices] == ["ch1", "ch2"]
    widget.channels.value = [viewer.layers["ch1"], viewer.layers["ch2"]]
    widget.n_clusters.value = 4
    run_and_wait(qtbot, widget)
    labels = viewer.layers["ch0 clusters"]
    reference = kmeans(ihc, 4, random_state=0, max_iter=30)
    np.testing.assert_array_equal(labels.data, reference.labels)
    for channel in range(3):
        recoloured = viewer.layers[f"ch{channel} recoloured"]
        assert recoloured.data.shape == ihc.shape[:2]
    assert {"mean_ch0", "mean_ch1", "mean_ch2"} <= set(labels.features.columns)


def test_stack_frame_by_frame_shares_centres(viewer):
    frame = data.camera()[::2, ::2]
    layer = viewer.add_image(np.stack([frame, frame]), name="movie", scale=(100.0, 1.0, 1.0))
    whole = finish(_layers.make_job(layer, n_clusters=4, spatial_weight=1.0))
    per_frame_job = _layers.make_job(layer, n_clusters=4, spatial_weight=1.0, per_frame=True)
    per_frame = finish(per_frame_job)
    assert per_frame.feature_space.factor[0] == 0.0 and whole.feature_space.factor[0] > 0
    # frames clustered with shared centres: the same frame gets the same ids
    np.testing.assert_array_equal(per_frame.labels[1], per_frame.labels[0])
    # as one volume, the frames' distance along z separates them
    assert np.any(whole.labels[1] != whole.labels[0])
    labels, _ = _layers.apply_layers(viewer, _layers.result_layers(per_frame_job, per_frame))
    np.testing.assert_allclose(labels.scale, (100.0, 1.0, 1.0))


def test_dask_layer_stays_lazy(viewer):
    lazy = da.from_array(data.astronaut(), chunks=(128, 128, 3))
    layer = viewer.add_image(lazy, name="lazy", rgb=True)
    job = _layers.make_job(layer, n_clusters=5)
    assert not job.live
    labels, recoloured = _layers.apply_layers(viewer, _layers.result_layers(job, finish(job)))
    assert isinstance(labels.data, da.Array) and isinstance(recoloured.data, da.Array)
    eager = kmeans(data.astronaut(), 5, random_state=0, max_iter=30)
    np.testing.assert_array_equal(np.asarray(labels.data), eager.labels)


def test_multiscale_layer_fit_coarse_label_every_level(viewer):
    full = np.repeat(np.repeat(data.astronaut(), 2, axis=0), 2, axis=1)  # 1024 x 1024
    pyramid = [full, full[::2, ::2], full[::4, ::4]]
    layer = viewer.add_image(pyramid, name="pyramid", rgb=True, multiscale=True)
    job = _layers.make_job(layer, n_clusters=5, spatial_weight=0.5)
    assert job.data.shape == (512, 512, 3)  # the coarsest level with enough pixels
    labels, recoloured = _layers.apply_layers(viewer, _layers.result_layers(job, finish(job)))
    shapes = [lvl.shape for lvl in labels.data]
    assert labels.multiscale and shapes == [(1024, 1024), (512, 512), (256, 256)]
    level0 = np.asarray(labels.data[0])
    level1 = np.asarray(labels.data[1])
    # consistent across levels: the coarse labels agree with the fine ones they cover
    assert np.mean(level0[::2, ::2] == level1) > 0.97
    assert recoloured.multiscale


def test_multiscale_fit_level_is_chosen_in_the_widget(viewer, qtbot):
    full = data.astronaut()
    layer = viewer.add_image([full, full[::2, ::2], full[::4, ::4]], rgb=True, multiscale=True)
    widget = open_widget(viewer)
    combo = widget.fit_level.native
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "auto (coarse)",
        "0: 512 x 512",
        "1: 256 x 256",
        "2: 128 x 128",
    ]
    widget.fit_level.value = 2
    widget.n_clusters.value = 4
    assert widget.job().data.shape == (128, 128, 3)
    run_and_wait(qtbot, widget)
    labels = viewer.layers[f"{layer.name} clusters"]
    assert labels.multiscale and labels.data[0].shape == (512, 512)
    with pytest.raises(ValueError, match=r"fit_level=5 is not a level"):
        _layers.make_job(layer, fit_level=5)


# -- trust: failures, paths, channels, renames and edits mid-run --------------------------


def notifications_since(seen):
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[seen:]]


def test_a_failed_run_notifies_once_and_resets_the_widget(viewer, qtbot):
    from napari.utils.notifications import notification_manager

    widget = astronaut_run(viewer, qtbot)
    assert widget.save_button.enabled and widget.compression.value
    # three grey levels: a run with 5 clusters finds out only in its rounds
    levels = np.random.default_rng(0).integers(0, 3, (1024, 1024)).astype(np.float64)
    viewer.add_image(levels, name="levels")
    widget.image.value = viewer.layers["levels"]
    widget.n_clusters.value = 5
    seen = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    messages = notifications_since(seen)
    assert len(messages) == 1 and "n_clusters=5 is larger" in messages[0], messages
    assert widget.status.value.startswith("failed: n_clusters=5")
    assert not widget.plot.visible and widget.compression.value == ""
    assert not widget.save_button.enabled and widget.run_button.enabled
    # what the failed run showed is gone, the earlier run's layers stay
    assert [layer.name for layer in viewer.layers] == [
        "astronaut",
        "astronaut clusters",
        "astronaut recoloured",
        "levels",
    ]


def test_save_palette_refuses_bad_paths_with_a_clear_message(viewer, qtbot, tmp_path):
    widget = astronaut_run(viewer, qtbot)
    for path, expected in [
        ("", "Choose a file name"),
        (tmp_path, "Choose a file name"),
        (tmp_path / "missing" / "p.png", "does not exist"),
    ]:
        seen = len(__import__("napari").utils.notifications.notification_manager.records)
        assert widget.save_palette(path) is None
        messages = notifications_since(seen)
        assert any(expected in m for m in messages) and "partial" not in " ".join(messages)
    assert list(tmp_path.iterdir()) == []
    assert widget.save_palette(tmp_path / "p") == tmp_path / "p.png"
    viewer.layers.remove("astronaut")  # the result no longer has its layer
    assert not widget.save_button.enabled


def test_a_multichannel_file_is_clustered_on_all_its_channels(viewer, qtbot):
    ihc = data.immunohistochemistry()
    viewer.add_image(ihc, channel_axis=2, name=["r", "g", "b"], colormap=["red", "green", "blue"])
    widget = open_widget(viewer)
    assert widget.image.value is viewer.layers["b"]  # the active layer
    assert {layer.name for layer in widget.channels.value} == {"r", "g"}
    widget.n_clusters.value = 4
    run_and_wait(qtbot, widget)
    expected = kmeans(ihc[..., [2, 0, 1]], 4, random_state=0, max_iter=30)
    np.testing.assert_array_equal(viewer.layers["b clusters"].data, expected.labels)
    recoloured = [viewer.layers[f"{c} recoloured"] for c in "bgr"[:1] + "rg"]
    # the first covers the originals: the picture is the recoloured channels alone
    assert [layer.blending for layer in recoloured] == ["opaque", "additive", "additive"]
    widget.image.value = viewer.layers["r"]
    partners = [layer.name for layer in widget.channels.choices]
    assert partners == ["g", "b"]  # never the plugin's own outputs


def test_spatial_weight_goes_past_the_old_bound(viewer):
    viewer.open_sample(PLUGIN, "astronaut")
    widget = open_widget(viewer)
    widget.spatial_weight.value = 5.0
    assert widget.job().kwargs["spatial_weight"] == 5.0


def long_run(viewer, widget, rounds=6):
    viewer.add_image(data.retina()[::2, ::2], name="retina", rgb=True)
    widget.image.value = viewer.layers["retina"]
    widget.spatial_weight.value = 1.0
    widget.n_clusters.value = 30
    widget.tol.value = 0.0
    widget.max_iter.value = rounds
    return widget.run()


@pytest.mark.parametrize(
    ("renamed", "new", "expected"),
    [
        # a result renamed mid-run: no duplicate is added beside it
        ("retina clusters", "mine", ["retina", "mine", "retina recoloured"]),
        # the source renamed: its results keep the names the run started with (the
        # recoloured layer was "eye recoloured")
        ("retina", "eye", ["eye", "retina clusters", "retina recoloured"]),
    ],
)
def test_a_layer_renamed_mid_run(viewer, qtbot, renamed, new, expected):
    widget = open_widget(viewer)
    long_run(viewer, widget)
    qtbot.waitUntil(lambda: "retina clusters" in viewer.layers, timeout=60_000)
    viewer.layers[renamed].name = new
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert [layer.name for layer in viewer.layers] == expected
    assert viewer.layers[expected[1]].metadata["napari-kmeanz"]["n_iter"] == 6


@pytest.mark.parametrize("change", ["replace its data", "remove it"])
def test_a_source_changed_mid_run_discards_the_run_and_its_layers(viewer, qtbot, change):
    from napari.utils.notifications import notification_manager

    widget = open_widget(viewer)
    long_run(viewer, widget, rounds=50)
    qtbot.waitUntil(lambda: "retina clusters" in viewer.layers, timeout=60_000)  # a preview
    seen = len(notification_manager.records)
    if change == "remove it":
        viewer.layers.remove("retina")
    else:
        viewer.layers["retina"].data = data.astronaut()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert any("changed during the run" in m for m in notifications_since(seen))
    assert widget.status.value.startswith("discarded")
    # the preview layers the run added are gone: the viewer holds what it held before
    assert [layer.name for layer in viewer.layers] == ([] if change == "remove it" else ["retina"])
    assert not widget.save_button.enabled


def test_a_discarded_rerun_gives_the_earlier_results_back(viewer, qtbot):
    widget = astronaut_run(viewer, qtbot)
    labels, recoloured = viewer.layers["astronaut clusters"], viewer.layers["astronaut recoloured"]
    before = (labels.data, labels.metadata["napari-kmeanz"]["n_iter"], labels.colormap.colors)
    widget.image.value = viewer.layers["astronaut"]
    widget.n_clusters.value, widget.spatial_weight.value = 30, 1.0
    widget.tol.value, widget.max_iter.value = 0.0, 50
    widget.run()
    qtbot.waitUntil(lambda: "round" in labels.metadata["napari-kmeanz"], timeout=60_000)
    assert labels.data is not before[0] and not recoloured.visible  # a preview over them
    viewer.layers["astronaut"].data = data.astronaut()[::-1].copy()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.status.value.startswith("discarded")
    assert labels.data is before[0] and labels.metadata["napari-kmeanz"]["n_iter"] == before[1]
    np.testing.assert_array_equal(labels.colormap.colors, before[2])
    assert recoloured.visible  # hidden while the run went on, shown again
    assert [layer.name for layer in viewer.layers] == [
        "astronaut",
        "astronaut clusters",
        "astronaut recoloured",
    ]


def test_a_rerun_keeps_labels_painted_by_hand(viewer, qtbot):
    widget = astronaut_run(viewer, qtbot)
    labels = viewer.layers["astronaut clusters"]
    before = labels.data.copy()
    labels.paint((100, 100), 7)  # a brush stroke, as napari's paint tool makes it
    painted = labels.data.copy()
    assert not np.array_equal(painted, before)
    widget.image.value = viewer.layers["astronaut"]
    widget.n_clusters.value = 5
    run_and_wait(qtbot, widget)
    np.testing.assert_array_equal(labels.data, painted)  # kept as painted
    assert viewer.layers["astronaut clusters [1]"].data.max() == 5
    labels.undo()  # napari's undo still takes the stroke back
    np.testing.assert_array_equal(labels.data, before)


def test_typed_commands_and_the_widget_take_64_bit_integer_images(viewer, qtbot):
    ramp = np.arange(64 * 64).reshape(64, 64)  # int64, as np.arange and lists give
    pm = PluginManager.instance()
    labels = pm.get_command("napari-kmeanz.cluster_labels").exec(
        args=(ramp,), kwargs={"n_clusters": 2}
    )
    np.testing.assert_array_equal(labels, kmeans(ramp, 2, random_state=0).labels)
    assert np.all(labels[:30] == 1) and np.all(labels[34:] == 2)  # a split of the ramp
    viewer.add_image(ramp.astype(np.uint64), name="ramp")
    widget = open_widget(viewer)
    widget.n_clusters.value = 2
    run_and_wait(qtbot, widget)
    expected = kmeans(ramp.astype(np.uint64), 2, random_state=0, max_iter=30).labels
    np.testing.assert_array_equal(viewer.layers["ramp clusters"].data, expected)
    assert viewer.layers["ramp recoloured"].data.dtype == np.uint64


def test_cancel_right_after_run_drops_pending_previews_cleanly(viewer, qtbot):
    viewer.add_image(data.retina()[::2, ::2], name="retina", rgb=True)
    widget = open_widget(viewer)
    widget.n_clusters.value = 12
    widget.max_iter.value = 100
    widget.tol.value = 0.0
    worker = widget.run()
    states = []
    worker.yielded.connect(lambda u: states.append(u) if hasattr(u, "state") else None)
    qtbot.waitUntil(lambda: bool(states), timeout=60_000)  # an update queued, maybe not shown
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    qtbot.wait(50)  # any drain planned before the cancel runs now, on an empty queue
    assert widget.status.value.startswith("cancelled") and widget.run_button.enabled


def test_a_sweep_leaves_the_last_runs_recoloured_image_as_it_was(viewer, qtbot):
    widget = astronaut_run(viewer, qtbot)
    recoloured = viewer.layers["astronaut recoloured"]
    assert recoloured.visible
    widget.image.value = viewer.layers["astronaut"]
    widget.sweep_from.value, widget.sweep_to.value = 2, 3
    widget.sweep()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert recoloured.visible  # a sweep shows no recoloured image: it hides none
