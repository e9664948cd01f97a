"""Make the README's screenshot: the widget and its result in a real napari viewer.

Usage (needs a display; headless: ``xvfb-run -a python docs/make_screenshot.py``):

    .venv/bin/python docs/make_screenshot.py [OUTPUT.png]     (default: docs/screenshot.png)

Opens the astronaut sample, docks the "K-means clustering" widget, runs it with k=8 and the
original script's spatial weight (position as important as colour), waits for the result and
saves a screenshot of the whole window.
"""

import sys
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication


def main(output: Path) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 820)
    viewer.open_sample("napari-kmeanz", "astronaut")
    _, widget = viewer.window.add_plugin_dock_widget("napari-kmeanz", "K-means clustering")
    widget.n_clusters.value = 8
    widget.same_footing.changed.emit(True)
    worker = widget.run()
    done = []
    worker.finished.connect(lambda: done.append(True))
    app = QApplication.instance()
    while not done:
        app.processEvents()
    for _ in range(20):
        app.processEvents()
    viewer.layers["astronaut recoloured"].visible = False
    viewer.layers["astronaut clusters"].opacity = 0.85
    viewer.layers.selection.active = viewer.layers["astronaut clusters"]
    output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(output), canvas_only=False, flash=False)
    print(f"saved {output}")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshot.png"))
