"""The tuning constants whose reason is a speed: each one's workload timed at its value, at
half and at twice it, in one run (the README's table of tuning constants quotes these).

    .venv/bin/python benchmarks/bench_constants.py            # the 4096x4096 photo
    .venv/bin/python benchmarks/bench_constants.py --quick    # a 2048x2048 crop of it

Every workload is a whole ``kmeans`` call (10 rounds, ``tol=0``, seed 0), timed as the best
of three (of six at the chosen value, timed before and after the others); a constant is set
in the module that holds it (nothing else reads a copy of it). The figures are ratios to the
time at the chosen value: above 1 means slower. Results do not depend on these constants
(``benchmarks/fingerprints.py``), only time does.
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

from bench_engine import make_image
from napari_kmeanz import kmeans

# constant: (module, what it sizes, the workload: k, spatial weight)
CONSTANTS = {
    "SUB_BLOCK": ("_kernels", "rows per sub-block, the colours' open cells", (16, 0.0)),
    "POINT_SUB_BLOCK": ("_points", "points per sub-block, k above the cells' limit", (50, 0.0)),
    "CODE_TILE": ("_codes", "pixels per tile of colour codes (histogram, labels)", (16, 0.0)),
    "BATCH_PIXELS": ("_rows", "pixels per batch of rows (the first pass)", (16, 1.0)),
    "BATCH_ROWS": ("_tiles", "raw rows per batch of open tiles", (16, 1.0)),
    "NUMPY_CHUNK_PIXELS": ("_params", "pixels per chunk of a numpy image", (16, 1.0)),
}


def timed(image, k, spatial_weight, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        kmeans(image, k, spatial_weight=spatial_weight, max_iter=10, tol=0, random_state=0)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2048x2048 crop")
    args = parser.parse_args()
    image = make_image("photo4096")
    if args.quick:
        image = np.ascontiguousarray(image[1024:3072, 1024:3072])
    print(f"image {image.shape[0]}x{image.shape[1]}; times: best of 3, 10 rounds")
    print(f"{'constant':<20} {'value':>9} {'half':>6} {'double':>7}  workload; what it sizes")
    for name, (module_name, meaning, (k, weight)) in CONSTANTS.items():
        module = importlib.import_module(f"napari_kmeanz.{module_name}")
        chosen = getattr(module, name)
        times = {}
        for factor in (1, 0.5, 2, 1):  # the chosen value timed first and last: drift shows
            setattr(module, name, max(1, int(chosen * factor)))
            try:
                times[factor] = min(times.get(factor, np.inf), timed(image, k, weight))
            finally:
                setattr(module, name, chosen)
        base = times[1]
        print(
            f"{name:<20} {chosen:>9} {times[0.5] / base:>6.2f} {times[2] / base:>7.2f}  "
            f"k={k} sw={weight} ({base:.2f} s); {meaning}",
            flush=True,
        )


if __name__ == "__main__":
    main()
