"""Out-of-core benchmark: zarr-backed images larger than one would hold in memory.

Run by hand (a few minutes; needs the ``bench`` extra: ``pip install -e .[bench]``):

    .venv/bin/python benchmarks/bench_scale.py [--workdir DIR]

Data, written once to zarr stores in DIR (default: the system's temp folder): an 8192x8192 RGB
photo (astronaut upscaled, light noise; 1024x1024 chunks) and a 64x1024x1024 uint16 stack
(67 M voxels; 16x512x512 chunks). Each is clustered with k=16, by colour alone and with
position features (spatial_weight=1), by napari-kmeanz (labels written to a zarr store) for 10
rounds (tol=0) and with its defaults (to convergence on the inertia, "-default"), and by
dask-ml's KMeans on the same dask array (features as a lazy dask array) for 10 rounds.
dask-ml starts from k pixels drawn at random: its default k-means|| initialisation is not
bounded on such arrays (seen here: 2 GB and minutes on one core). dask-ml's ``inertia_`` sums
plain distances, not squared ones, so its inertia is recomputed from its labels and centres.
Every measurement is a fresh subprocess; peak RSS is the process's peak during the fit (Linux
VmHWM, reset before).

Target (issue "Scale"): at least 5x faster than dask-ml at equal or lower inertia, with peak
RSS under 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _measure import peak_rss_mib, reset_peak_rss

K, ROUNDS = 16, 10


def make_stores(workdir: Path) -> dict:
    import dask.array as da
    from skimage import data

    stores = {"rgb": workdir / "photo8192.zarr", "stack": workdir / "stack64x1024.zarr"}
    if not stores["rgb"].exists():
        small = data.astronaut()

        def upscale(block, block_info=None):
            (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
            yy, xx = np.mgrid[y0:y1, x0:x1]
            out = small[yy // 16, xx // 16].astype(np.int16)
            noise = np.random.default_rng(y0 * 8192 + x0).normal(0, 2, out.shape)
            return np.clip(out + noise, 0, 255).astype(np.uint8)

        template = da.zeros((8192, 8192, 3), dtype=np.uint8, chunks=(1024, 1024, 3))
        da.map_blocks(upscale, template, dtype=np.uint8).to_zarr(str(stores["rgb"]))
    if not stores["stack"].exists():
        plane = data.camera().astype(np.uint16) * 257

        def planes(block, block_info=None):
            (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
            zz, yy, xx = np.mgrid[z0:z1, y0:y1, x0:x1]
            out = plane[yy // 2, xx // 2].astype(np.float64) * (0.6 + 0.4 * zz / 64)
            noise = np.random.default_rng(z0 * 10**7 + y0 * 1024 + x0).normal(0, 300, out.shape)
            return np.clip(out + noise, 0, 65535).astype(np.uint16)

        template = da.zeros((64, 1024, 1024), dtype=np.uint16, chunks=(16, 512, 512))
        da.map_blocks(planes, template, dtype=np.uint16).to_zarr(str(stores["stack"]))
    return stores


def features(image, factor):
    """The points napari-kmeanz clusters, as a lazy (n, d) dask array (for dask-ml)."""
    import dask.array as da

    spatial = image.shape if image.ndim == 3 and image.dtype == np.uint16 else image.shape[:-1]
    values = image.reshape(-1, 1) if len(spatial) == image.ndim else image.reshape(-1, 3)
    values = values.astype(np.float64)
    n_spatial = len(factor) - values.shape[1]
    if not n_spatial:
        return values
    axes = [
        da.arange(n, chunks=c, dtype=np.float64) * f
        for n, c, f in zip(spatial, image.chunks[: len(spatial)], factor, strict=False)
    ]
    grids = da.meshgrid(*axes, indexing="ij")
    coords = da.stack([g.reshape(-1) for g in grids], axis=1)
    joined = da.concatenate([coords.rechunk(values.chunks[0]), values], axis=1)
    return joined.rechunk({1: -1})  # dask-ml wants the features in one chunk


def squared_inertia(x, labels, centers) -> float:
    """Sum of squared distances of the rows of ``x`` to their cluster centres (chunk by chunk)."""
    import dask.array as da

    def block(rows, ids):
        return np.array([[((rows - centers[ids[:, 0]]) ** 2).sum()]])

    ids = labels.rechunk((x.chunks[0],))[:, None]
    parts = da.map_blocks(block, x.rechunk({1: -1}), ids, chunks=(1, 1), dtype=np.float64)
    return float(parts.sum().compute())


def run_one(tool: str, kind: str, spatial: bool, workdir: Path) -> dict:
    import dask.array as da

    stores = make_stores(workdir)
    image = da.from_zarr(str(stores[kind]))
    channel_axis = "auto" if kind == "rgb" else None
    from napari_kmeanz import kmeans

    weight = 1.0 if spatial else 0.0
    if tool == "dask-ml":
        from dask_ml.cluster import KMeans

        # the features napari-kmeanz uses: position times weight * value range / longest
        # extent (spacing 1), then the values (prepared outside the timed part)
        n_values = 3 if kind == "rgb" else 1
        spatial_shape = image.shape[: image.ndim - (n_values == 3)]
        low, high = (float(v) for v in da.compute(image.min(), image.max()))
        scale = weight * (high - low) / max(spatial_shape)
        factor = np.array([scale] * len(spatial_shape) * spatial + [1.0] * n_values)
        x = features(image, factor)
        picks = np.sort(np.random.default_rng(0).choice(x.shape[0], K, replace=False))
        init = x[picks].compute()
    reset_peak_rss()
    start = time.perf_counter()
    if tool.startswith("napari-kmeanz"):
        rounds = {} if tool.endswith("default") else {"max_iter": ROUNDS, "tol": 0}
        result = kmeans(
            image, K, spatial_weight=weight, channel_axis=channel_axis, random_state=0, **rounds
        )
        out = workdir / f"labels-{kind}-{int(spatial)}.zarr"
        result.labels.to_zarr(str(out), overwrite=True)
        inertia, n_iter = result.inertia, result.n_iter
    else:
        model = KMeans(n_clusters=K, init=init, max_iter=ROUNDS, tol=0, random_state=0).fit(x)
        n_iter = int(model.n_iter_)
    seconds = time.perf_counter() - start
    if tool == "dask-ml":
        # dask-ml's inertia_ sums plain distances (pairwise_distances_argmin_min), not squared
        # ones: the inertia of its result is recomputed here, outside the timed part
        inertia = squared_inertia(x, model.labels_, model.cluster_centers_)
    return {"seconds": seconds, "inertia": float(inertia), "n_iter": n_iter,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, kind, spatial = args.child
        print(json.dumps(run_one(tool, kind, spatial == "1", args.workdir)))
        return
    make_stores(args.workdir)
    header = (
        f"{'data':<22} {'features':<9} {'tool':<22} {'time s':>8} {'rounds':>6} "
        f"{'inertia':>12} {'peak MiB':>9} | {'speed-up':>8} {'inertia':>8}"
    )
    print(header)
    print("-" * len(header))
    for kind, label in (("rgb", "8192x8192 RGB zarr"), ("stack", "64x1024x1024 u16 zarr")):
        for spatial in (False, True):
            rows = {}
            for tool in ("napari-kmeanz", "napari-kmeanz-default", "dask-ml"):
                command = [sys.executable, __file__, "--workdir", str(args.workdir), "--child",
                           tool, kind, str(int(spatial))]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rows[tool] = json.loads(done.stdout.strip().splitlines()[-1])
            ref = rows["dask-ml"]
            for tool, row in rows.items():
                print(
                    f"{label:<22} {'position' if spatial else 'value':<9} {tool:<22} "
                    f"{row['seconds']:>8.2f} {row['n_iter']:>6} {row['inertia']:>12.5g} "
                    f"{row['peak_rss_mib']:>9.0f} | {ref['seconds'] / row['seconds']:>7.1f}x "
                    f"{row['inertia'] / ref['inertia']:>8.4f}",
                    flush=True,
                )
    print("\nspeed-up: dask-ml's time / the tool's; inertia: the tool's / dask-ml's.")


if __name__ == "__main__":
    main()
