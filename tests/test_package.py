"""The installed package: metadata, manifest, and an import that stays free of napari and Qt."""

import subprocess
import sys
from importlib.metadata import distribution

GUI_MODULES = ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "vispy", "magicgui")


def test_import_loads_neither_napari_nor_qt():
    code = (
        "import sys, napari_kmeanz\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({GUI_MODULES!r}))\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_run_does_not_import_distributed():
    """Without a client, dask's threads run the passes: asking dask which scheduler is on
    would import ``distributed`` (0.14 s of a fresh process), where none can be on before."""
    code = (
        "import sys, numpy as np, dask.array as da\n"
        "from napari_kmeanz import kmeans\n"
        "image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)\n"
        "kmeans(image, 3, random_state=0)\n"
        "kmeans(image, 3, spatial_weight=1, random_state=0)\n"
        "kmeans(da.from_array(image, chunks=32), 3, spatial_weight=1, random_state=0)\n"
        "print('distributed' in sys.modules)\n"  # (dask's own compute would import it)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_metadata():
    dist = distribution("napari-kmeanz")
    assert "Framework :: napari" in dist.metadata.get_all("Classifier")
    assert dist.metadata["Requires-Python"] == ">=3.11"
    entry_points = [ep for ep in dist.entry_points if ep.group == "napari.manifest"]
    assert [ep.value for ep in entry_points] == ["napari_kmeanz:napari.yaml"]
    core = [r for r in dist.requires if "extra ==" not in r]
    for requirement in core:
        lowered = requirement.lower()
        assert not lowered.startswith(("pyqt", "pyside", "qtpy"))
        assert "[all]" not in lowered and "[pyqt" not in lowered


def test_manifest_is_installed_and_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-kmeanz")
    assert manifest.name == "napari-kmeanz"


def test_front_end_defaults_are_the_ones_documented_in_one_place():
    """k and max_iter differ between the API, the widget and the CLI on purpose; the values
    and why live in _defaults."""
    import inspect

    from napari_kmeanz import _cli, _defaults, iter_kmeans, kmeans

    for function in (kmeans, iter_kmeans):
        parameters = inspect.signature(function).parameters
        assert {name: parameters[name].default for name in _defaults.API} == _defaults.API
    args = _cli.parser().parse_args(["astronaut"])
    assert (args.clusters, args.rounds) == (_defaults.CLI["n_clusters"], _defaults.CLI["max_iter"])
    # (the widget's: tests/test_plugin.py)


def test_kernels_compile_where_no_cache_can_be_written():
    """Where numba finds no folder to cache the kernels in (a read-only install, no home),
    they are compiled in the process instead (numba would raise "no locator available"):
    the same labels as with the cache."""
    import os

    import numpy as np

    from napari_kmeanz import kmeans

    code = (
        "import numpy as np\n"
        "from napari_kmeanz import kmeans\n"
        "image = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)\n"
        "labels = kmeans(image, 30, spatial_weight=1, random_state=0).labels\n"
        "print(','.join(map(str, np.bincount(labels.ravel()))))\n"
    )
    # (a locator that finds no folder for a source file: numba's own, for IPython cells)
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "_IPythonCacheLocator"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)  # fmt: skip
    image = np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    labels = kmeans(image, 30, spatial_weight=1, random_state=0).labels
    assert out.stdout.strip() == ",".join(map(str, np.bincount(labels.ravel())))
