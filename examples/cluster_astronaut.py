"""Cluster scikit-image's astronaut through the Python API and write the results.

Usage: python examples/cluster_astronaut.py [OUTDIR]   (default: results/)

Writes, for colour-only k-means (k=16) and for 5-D (y, x, R, G, B) k-means with position on
the same footing as colour (k=50, spatial_weight=1): the labels (16-bit PNG, lossless), the
recoloured image (PNG) and a JSON summary (inertia per round, rounds, cluster colours).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from skimage import data, io

from napari_kmeanz import kmeans


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    image = data.astronaut()
    for name, params in {
        "astronaut_colour_k16": {"n_clusters": 16},
        "astronaut_5d_k50": {"n_clusters": 50, "spatial_weight": 1.0},
    }.items():
        start = time.perf_counter()
        result = kmeans(image, random_state=0, **params)
        seconds = time.perf_counter() - start
        labels = result.labels.astype(np.uint16)
        io.imsave(outdir / f"{name}_labels.png", labels, check_contrast=False)
        io.imsave(outdir / f"{name}_recoloured.png", result.recolor(), check_contrast=False)
        summary = {
            "parameters": params,
            "seconds": round(seconds, 3),
            "rounds": result.n_iter,
            "converged": result.converged,
            "inertia": result.inertia,
            "inertia_history": result.inertia_history.tolist(),
            "colors": np.round(result.colors, 2).tolist(),
            "pixels_per_cluster": result.counts.tolist(),
        }
        (outdir / f"{name}.json").write_text(json.dumps(summary, indent=2))
        print(f"{name}: {result.n_iter} rounds, inertia {result.inertia:.4g}, {seconds:.2f} s")
    print(f"results written to {outdir}/")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results"))
