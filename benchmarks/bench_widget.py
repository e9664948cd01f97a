"""The widget in a real napari viewer: how long the GUI freezes, how fast Cancel acts, how
soon the first preview shows.

Run by hand, under a display (``xvfb-run -a`` on a headless machine), a minute or two:

    xvfb-run -a .venv/bin/python benchmarks/bench_widget.py

Measured (issue "Trust"):
- the longest block of the event loop while a run goes on, measured by a 10 ms QTimer whose
  ticks are timed, next to napari's own cost for the same layers, measured by the same timer
  around one callback: setting their data once (a rerun, whose layers exist) or adding them
  (a first run, which adds its layers). Cases: a 2048x2048 photo, k=50, spatial weight 1, 12
  rounds; the immunohistochemistry sample with the widget's defaults; and the two reported
  freezes, a 512x512 RGBA photo (once 2 s at the run's end) and a 1024x1024 photo with
  spatial weight 1 (once 4 frames a second);
- the time from Cancel to the end of the run, in the middle of a long round, and during
  seeding (k=1000);
- the time from Run to the first preview on a 4096x4096 photo (the widget's defaults).

Targets: no block longer than napari's set-data cost plus 0.1 s; Cancel within 0.5 s; the
first preview on 4096x4096 within 1 s.
"""

from __future__ import annotations

import time

import numpy as np

PLUGIN, WIDGET = "napari-kmeanz", "K-means clustering"
# the widget's own defaults, set again between cases
DEFAULTS = {"n_clusters": 8, "spatial_weight": 0.0, "max_iter": 30, "tol": 1e-4}


def photo(side: int) -> np.ndarray:
    """Astronaut upscaled to side x side with light noise (distinct colours, like a photo)."""
    from skimage import data, transform

    big = transform.resize(data.astronaut(), (side, side), order=1, preserve_range=True)
    noise = np.random.default_rng(0).normal(0, 2, big.shape)
    return np.clip(big + noise, 0, 255).astype(np.uint8)


class Ticks:
    """A 10 ms timer; the largest gap between its ticks is the longest the GUI was frozen."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def __enter__(self):
        self.times = [time.perf_counter()]
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()
        self.times.append(time.perf_counter())

    @property
    def longest(self) -> float:
        return float(np.max(np.diff(self.times))) if len(self.times) > 1 else 0.0


def wait(app, condition, timeout=600.0):
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError("the run did not end in time")
        app.processEvents()
        time.sleep(0.002)


def fresh(viewer, widget, image, rgb=True):
    """A new source layer for a case, chosen in the widget; the layers of earlier cases are
    hidden, not removed (removing 2048^2 layers and adding new ones has crashed Mesa's
    software renderer, llvmpipe, under Xvfb)."""
    for layer in viewer.layers:
        layer.visible = False
    fresh.count = getattr(fresh, "count", 0) + 1
    widget.image.value = viewer.add_image(image, name=f"photo{fresh.count}", rgb=rgb)
    return widget.image.value.name


def longest_own_block(app, action) -> float:
    """The longest event-loop block while napari does ``action`` in one callback, and
    redraws after it."""
    from qtpy.QtCore import QTimer

    done = []

    def run():
        action()
        done.append(True)

    with Ticks() as own:
        QTimer.singleShot(20, run)
        wait(app, lambda: done)
        end = time.perf_counter() + 0.3
        wait(app, lambda: time.perf_counter() > end)  # let the redraw happen
    return own.longest


def freeze_case(app, viewer, widget, title, image, rerun=False, **values):
    """The longest block of a run, next to napari's own cost for the same layers: setting
    their data once (a rerun, the layers there) or adding them (a first run)."""
    name = fresh(viewer, widget, image)
    for key, value in values.items():
        getattr(widget, key).value = value
    if rerun:  # a run first: the measured one updates its layers
        widget.run()
        wait(app, lambda: not widget.running)
    with Ticks() as during:
        widget.run()
        wait(app, lambda: not widget.running)
    outputs = [viewer.layers[f"{name} clusters"], viewer.layers[f"{name} recoloured"]]

    def set_again():
        for layer in outputs:
            layer.data = layer.data.copy()

    def add_again():
        from napari.layers import Layer

        for layer in outputs:
            data, kwargs, kind = layer.as_layer_data_tuple()
            viewer.add_layer(Layer.create(data, {**kwargs, "name": f"{name} again"}, kind))

    own_set = longest_own_block(app, set_again)
    own = own_set if rerun else longest_own_block(app, add_again)
    floor = "set-data" if rerun else "add-layers"
    print(
        f"{title:<48} longest block {during.longest:6.3f} s   napari {floor} {own:6.3f} s"
        f"   excess {during.longest - own:+.3f} s (target <= +0.1)"
        f"   napari set-data {own_set:.3f} s"
    )


def cancel_case(app, viewer, widget, title, image, when, **values):
    name = fresh(viewer, widget, image)
    for key, value in values.items():
        getattr(widget, key).value = value
    widget.run()
    wait(app, lambda: when(widget, viewer, name))
    start = time.perf_counter()
    widget.cancel()
    wait(app, lambda: not widget.running)
    stop = time.perf_counter() - start
    print(f"{title:<52} Cancel to stop {stop:6.3f} s   (target <= 0.5 s)   {widget.status.value}")


def first_preview_case(app, viewer, widget, title, image):
    name = fresh(viewer, widget, image)
    for key, value in DEFAULTS.items():
        getattr(widget, key).value = value
    start = time.perf_counter()
    widget.run()
    wait(app, lambda: f"{name} clusters" in viewer.layers)
    first = time.perf_counter() - start
    wait(app, lambda: not widget.running)
    print(f"{title:<52} first preview {first:6.3f} s   (target <= 1 s)")


def main():
    import napari
    from napari.utils.notifications import notification_manager
    from skimage import data

    notification_manager.install_hooks()
    viewer = napari.Viewer(show=True)
    app = napari.qt.get_qapp()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    p2048 = photo(2048)
    big = dict(n_clusters=50, spatial_weight=1.0, max_iter=12, tol=0.0)  # noqa: C408
    # a first run adds its layers (the first Labels layer of a process costs napari more
    # than later ones); a rerun updates them
    freeze_case(
        app, viewer, widget, "2048^2, k=50, spatial 1, 12 rounds (new layers)", p2048, **big
    )
    freeze_case(
        app, viewer, widget, "2048^2, k=50, spatial 1, 12 rounds (rerun)", p2048, True, **big
    )
    ihc = data.immunohistochemistry()
    freeze_case(
        app, viewer, widget, "immunohistochemistry, defaults (new layers)", ihc, **DEFAULTS
    )
    freeze_case(
        app, viewer, widget, "immunohistochemistry, defaults (rerun)", ihc, True, **DEFAULTS
    )

    rgba = np.dstack([data.astronaut(), np.full((512, 512), 255, np.uint8)])
    rgba[:128, :, 3] = 0  # a transparent band: those pixels are left out
    freeze_case(app, viewer, widget, "512^2 RGBA, defaults (new layers)", rgba, **DEFAULTS)
    freeze_case(
        app, viewer, widget, "1024^2, k=16, spatial 1 (new layers)", photo(1024),
        **{**DEFAULTS, "n_clusters": 16, "spatial_weight": 1.0},
    )  # fmt: skip

    def mid_round(widget, viewer, name):  # a preview shown, the next round under way
        return f"{name} clusters" in viewer.layers and widget.status.value.startswith("round")

    cancel_case(
        app, viewer, widget, "Cancel in a long round (2048^2, k=300, 5-D)", p2048, mid_round,
        n_clusters=300, spatial_weight=1.0, max_iter=50, tol=0.0,
    )  # fmt: skip
    cancel_case(
        app, viewer, widget, "Cancel during seeding (astronaut, k=1000)", data.astronaut(),
        lambda widget, viewer, name: widget.status.value.startswith("seeding"),
        **{**DEFAULTS, "n_clusters": 1000},
    )  # fmt: skip
    first_preview_case(app, viewer, widget, "4096^2 photo, defaults", photo(4096))
    viewer.close()


if __name__ == "__main__":
    main()
