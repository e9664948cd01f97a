"""Fingerprints of results: labels, inertias and centres of many runs, to compare two commits.

A refactor must not change any result. Run this at the commit before it and after it, and
compare the two outputs line by line (``diff``): each line is one case, with a hash of its
labels and colours, its inertia history written in full (``repr`` of each float) and its
number of rounds.

    .venv/bin/python benchmarks/fingerprints.py > before.txt        # at the old commit
    .venv/bin/python benchmarks/fingerprints.py > after.txt
    diff before.txt after.txt && echo identical

``--big`` adds the 4096x4096 photo of ``bench_engine.py`` (colour-only and 5-D, k=16 and 50,
10 rounds). Only the public API is used, so the script runs unchanged on either side of a
refactor; the one exception, the limit on tiles kept between passes, is found by name in
whichever module holds it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import pkgutil
import sys
import warnings

import dask.array as da
import numpy as np
from skimage import data, util

import napari_kmeanz
from napari_kmeanz import iter_kmeans, kmeans, predict


def digest(array) -> str:
    array = np.ascontiguousarray(np.asarray(array))
    return hashlib.sha256(array.tobytes() + str(array.dtype).encode()).hexdigest()[:16]


def line(name: str, result) -> str:
    history = ",".join(repr(float(v)) for v in result.inertia_history)
    return (
        f"{name}: labels={digest(result.labels)} colors={digest(result.colors)} "
        f"centers={digest(result.centers)} counts={digest(result.counts)} "
        f"inertia={float(result.inertia)!r} n_iter={result.n_iter} "
        f"converged={result.converged} history=[{history}]"
    )


def set_constant(name: str, value):
    """Set a module-level tuning constant wherever it lives; returns the old value."""
    for info in pkgutil.iter_modules(napari_kmeanz.__path__):
        module = importlib.import_module(f"napari_kmeanz.{info.name}")
        if hasattr(module, name):
            old = getattr(module, name)
            setattr(module, name, value)
            return module, old
    raise LookupError(name)


def cases():
    astronaut = data.astronaut()
    camera = data.camera()
    ihc = data.immunohistochemistry()
    rng = np.random.default_rng(1)
    yield "rgb k16", lambda: kmeans(astronaut, 16, random_state=0)
    yield "5-D k16", lambda: kmeans(astronaut, 16, spatial_weight=1, random_state=0)
    yield "5-D k40", lambda: kmeans(astronaut, 40, spatial_weight=1, random_state=3)
    yield "lab k8", lambda: kmeans(astronaut, 8, color_space="lab", random_state=0)
    yield (
        "lab sw0.5",
        lambda: kmeans(astronaut, 8, color_space="lab", spatial_weight=0.5, random_state=0),
    )
    yield "float camera", lambda: kmeans(util.img_as_float(camera), 5, random_state=0)
    yield (
        "uint16 sw0.5",
        lambda: kmeans(util.img_as_uint(camera), 6, spatial_weight=0.5, random_state=0),
    )
    yield (
        "dask ihc sw1",
        lambda: kmeans(
            da.from_array(ihc, chunks=(200, 256, 3)), 6, spatial_weight=1, random_state=0
        ),
    )
    yield "retina k50", lambda: kmeans(data.retina()[::2, ::2], 50, random_state=0)
    yield (
        "random init",
        lambda: kmeans(
            data.coffee(), 7, init="random", n_init=2, spatial_weight=0.3, random_state=5
        ),
    )
    mask = np.zeros(data.coffee().shape[:2], bool)
    mask[50:300, 100:500] = True
    yield "coffee mask", lambda: kmeans(data.coffee(), 8, mask=mask, random_state=0)
    yield (
        "coffee mask sw1",
        lambda: kmeans(data.coffee(), 8, mask=mask, spatial_weight=1, random_state=0),
    )
    rgba = np.dstack([data.chelsea(), np.full(data.chelsea().shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0
    yield "rgba", lambda: kmeans(rgba, 6, random_state=0)
    yield "rgba sw1", lambda: kmeans(rgba, 6, spatial_weight=1, random_state=0)
    volume = np.stack([camera[::4, ::4], camera[1::4, 1::4], camera[2::4, 2::4]])
    yield (
        "volume dask",
        lambda: kmeans(
            da.from_array(volume, chunks=(1, 64, 128)),
            4,
            spatial_weight=1,
            spacing=(2, 1, 1),
            random_state=0,
        ),
    )
    yield (
        "time series spacing 0",
        lambda: kmeans(volume, 4, spatial_weight=1, spacing=(0, 1, 1), random_state=0),
    )
    far = (camera.astype(np.int64) + (2**31 - 300)).astype(np.int32)
    yield "int32 far", lambda: kmeans(far, 4, random_state=0)
    yield "int32 far sw1", lambda: kmeans(far[::2, ::2], 4, spatial_weight=1, random_state=0)
    noisy = util.img_as_float32(camera).copy()
    noisy[rng.random(noisy.shape) < 0.01] = np.nan
    yield "float NaN", lambda: kmeans(noisy, 4, random_state=0)
    yield "float NaN sw1", lambda: kmeans(noisy, 4, spatial_weight=1, random_state=0)
    yield (
        "multichannel axis0",
        lambda: kmeans(
            np.moveaxis(ihc[::2, ::2], -1, 0),
            5,
            channel_axis=0,
            spatial_weight=0.2,
            random_state=0,
        ),
    )
    yield "tol0 k3", lambda: kmeans(camera, 3, tol=0, max_iter=50, random_state=2)
    yield "uint16 rgb", lambda: kmeans(util.img_as_uint(ihc[::2, ::2]), 6, random_state=0)
    yield "small sample", lambda: kmeans(astronaut, 10, sample_size=500, random_state=4)
    init = kmeans(astronaut, 5, random_state=0).centers
    yield "init array", lambda: kmeans(astronaut, 5, init=init + 3.0, max_iter=5)

    def uncached():
        module, old = set_constant("CACHED_PIXELS", 0)
        try:
            return kmeans(
                da.from_array(ihc, chunks=(256, 300, 3)), 12, spatial_weight=1, random_state=0
            )
        finally:
            module.CACHED_PIXELS = old

    yield "uncached tiles", uncached

    def iterated():
        states = list(iter_kmeans(astronaut, 6, spatial_weight=1, max_iter=4, random_state=0))
        return states[-1].result, [digest(s.labels()) for s in states[:-1]]

    yield "iter states", iterated

    def iterated_colors():
        states = list(iter_kmeans(astronaut, 6, max_iter=4, random_state=0))
        return states[-1].result, [digest(s.labels()) for s in states[:-1]]

    yield "iter colour states", iterated_colors

    def predicted():
        model = kmeans(astronaut[:256], 6, spatial_weight=1, random_state=0)
        return model, [digest(predict(astronaut[256:], model)), digest(model.recolor())]

    yield "predict", predicted
    yield from feature_cases(astronaut, camera, ihc, volume, noisy, mask)


def feature_cases(astronaut, camera, ihc, volume, noisy, mask):
    """Runs with filtered features: smoothed, the six kinds, masked, missing values, dask
    chunks with overlap, an anisotropic volume and a model applied to another image."""
    six = ["value", "gaussian", "gradient", "laplace", "std", "hessian"]
    yield "sigma rgb", lambda: kmeans(astronaut, 6, sigma=1.5, random_state=0)
    yield (
        "six kinds sw1",
        lambda: kmeans(
            ihc[::2, ::2], 5, sigma=1.0, features=six, spatial_weight=1, random_state=0
        ),
    )
    yield (
        "six kinds grey mask",
        lambda: kmeans(
            data.coffee()[..., 0], 4, sigma=2.0, features=six, mask=mask, random_state=0
        ),
    )
    yield "std NaN", lambda: kmeans(noisy, 3, sigma=2.0, features=["std"], random_state=0)
    yield (
        "sigma dask chunks",
        lambda: kmeans(
            da.from_array(ihc, chunks=(200, 256, 3)),
            5,
            sigma=(1.0, 2.0),
            features=["gaussian", "gradient"],
            spatial_weight=0.5,
            random_state=0,
        ),
    )
    yield (
        "sigma volume spacing",
        lambda: kmeans(
            da.from_array(volume, chunks=(1, 64, 128)),
            3,
            sigma=2.0,
            spacing=(4, 1, 1),
            features=["gaussian", "hessian"],
            random_state=0,
        ),
    )

    def predicted_features():
        model = kmeans(camera[:256], 4, sigma=1.0, features=["gaussian", "std"],
                       random_state=0)  # fmt: skip
        return model, [digest(predict(camera[256:], model))]

    yield "predict features", predicted_features


def big_cases():
    sys.path.insert(0, "benchmarks")
    from bench_engine import make_image

    photo = make_image("photo4096")
    for k in (16, 50):
        for sw in (0.0, 1.0):
            yield (
                f"photo4096 k{k} sw{sw}",
                lambda k=k, sw=sw: kmeans(
                    photo, k, spatial_weight=sw, max_iter=10, tol=0, random_state=0
                ),
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="add the 4096x4096 photo")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    todo = list(cases()) + (list(big_cases()) if args.big else [])
    for name, run in todo:
        out = run()
        extra = []
        if isinstance(out, tuple):
            out, extra = out
        print(line(name, out) + (f" extra={','.join(extra)}" if extra else ""), flush=True)


if __name__ == "__main__":
    main()
