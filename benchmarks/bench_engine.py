"""Engine benchmark: napari-kmeanz next to scikit-learn's KMeans (and faiss, where installed).

Run by hand (it takes several minutes, most of it in scikit-learn on the 4096x4096 photo):

    .venv/bin/python benchmarks/bench_engine.py            # everything
    .venv/bin/python benchmarks/bench_engine.py --quick    # astronaut only

Cases: astronaut (512x512) and a 4096x4096 photo (astronaut upscaled, with light noise so that
its colours are not all duplicates: about 1.1 M distinct colours); colour-only (R, G, B) and 5-D
(y, x, R, G, B, position on the same footing as colour) features; k = 16 and 50; 10 fixed rounds
(max_iter=10, tol=0) and each tool's default run to convergence. Every run is a fresh
subprocess, so its peak RSS is its own; the other tools get the same feature matrix that
napari-kmeanz clusters (built from the same image), scikit-learn with its own k-means++.

Targets (issue "The engine"), on the 4096x4096 photo: colour-only k=16 at least 20x faster than
scikit-learn at inertia <= 1.005x; 5-D k=16 at least 4x faster at inertia <= 1.01x; peak RSS at
most half of scikit-learn's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _measure import peak_rss_mib, reset_peak_rss

TOOLS = ["napari-kmeanz", "scikit-learn"] + (
    ["faiss"] if importlib.util.find_spec("faiss") is not None else []
)


def make_image(name: str) -> np.ndarray:
    from skimage import data, transform

    image = data.astronaut()
    if name == "astronaut":
        return image
    cached = Path(tempfile.gettempdir()) / "napari-kmeanz-bench-photo4096.npy"
    if not cached.exists():
        big = transform.resize(image, (4096, 4096), order=1, preserve_range=True)
        noise = np.random.default_rng(0).normal(0, 2, big.shape)
        np.save(cached, np.clip(big + noise, 0, 255).astype(np.uint8))
    return np.load(cached)


def feature_matrix(image: np.ndarray, spatial: bool) -> np.ndarray:
    """The points napari-kmeanz clusters, as one float64 matrix (what the other tools need)."""
    values = image.reshape(-1, image.shape[-1]).astype(np.float64)
    if not spatial:
        return values
    h, w = image.shape[:2]
    scale = (float(image.max()) - float(image.min())) / max(h, w)  # spatial_weight=1
    yy, xx = np.indices((h, w))
    return np.column_stack([yy.ravel() * scale, xx.ravel() * scale, values])


def run_one(tool: str, image_name: str, spatial: bool, k: int, fixed: bool) -> dict:
    image = make_image(image_name)
    rounds = {"max_iter": 10, "tol": 0.0} if fixed else {}
    if tool == "napari-kmeanz":
        from napari_kmeanz import kmeans

        def fit():
            result = kmeans(
                image, k, spatial_weight=1.0 if spatial else 0.0, random_state=0, **rounds
            )
            return result.inertia, result.n_iter

    elif tool == "scikit-learn":
        from sklearn.cluster import KMeans

        def fit():
            x = feature_matrix(image, spatial)
            model = KMeans(k, n_init=1, random_state=0, **rounds).fit(x)
            return model.inertia_, model.n_iter_

    else:
        import faiss

        def fit():
            x = feature_matrix(image, spatial).astype(np.float32)
            n_iter = 10 if fixed else 25
            model = faiss.Kmeans(x.shape[1], k, niter=n_iter, seed=0)
            model.train(x)
            distances, _ = model.index.search(x, 1)
            return float(distances.sum(dtype=np.float64)), n_iter

    reset_peak_rss()
    start_rss = peak_rss_mib()
    start = time.perf_counter()
    inertia, n_iter = fit()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "inertia": float(inertia),
        "n_iter": int(n_iter),
        "peak_rss_mib": peak_rss_mib(),
        "start_rss_mib": start_rss,
    }


def measure(tool, image_name, spatial, k, fixed) -> dict:
    args = [tool, image_name, str(int(spatial)), str(k), str(int(fixed))]
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="astronaut only")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, image_name, spatial, k, fixed = args.child
        print(json.dumps(run_one(tool, image_name, spatial == "1", int(k), fixed == "1")))
        return

    images = ["astronaut"] if args.quick else ["astronaut", "photo4096"]
    header = (
        f"{'image':<10} {'features':<8} {'k':>3} {'rounds':<9} {'tool':<14} {'time s':>8} "
        f"{'rounds':>6} {'inertia':>12} {'peak MiB':>9} {'base MiB':>9} | {'speed-up':>8} "
        f"{'inertia':>8} {'RSS':>6}"
    )
    print(header)
    print("-" * len(header))
    for image_name in images:
        for spatial in (False, True):
            for k in (16, 50):
                for fixed in (True, False):
                    rows = {tool: measure(tool, image_name, spatial, k, fixed) for tool in TOOLS}
                    ref = rows["scikit-learn"]
                    for tool, row in rows.items():
                        speedup = ref["seconds"] / row["seconds"]
                        inertia_ratio = row["inertia"] / ref["inertia"]
                        rss_ratio = row["peak_rss_mib"] / ref["peak_rss_mib"]
                        print(
                            f"{image_name:<10} {'5-D' if spatial else 'colour':<8} {k:>3} "
                            f"{'10 fixed' if fixed else 'converge':<9} {tool:<14} "
                            f"{row['seconds']:>8.2f} {row['n_iter']:>6} {row['inertia']:>12.5g} "
                            f"{row['peak_rss_mib']:>9.0f} {row['start_rss_mib']:>9.0f} | "
                            f"{speedup:>7.1f}x "
                            f"{inertia_ratio:>8.4f} {rss_ratio:>6.2f}",
                            flush=True,
                        )
    print(
        "\nspeed-up: scikit-learn's time / the tool's; inertia and RSS: the tool's / "
        "scikit-learn's (lower is better). Peak RSS is the process's peak during the fit;\n"
        "'base' is its RSS just before (interpreter, libraries and the image, loaded the same\n"
        "way for every tool)."
    )


if __name__ == "__main__":
    main()
