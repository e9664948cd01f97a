"""Batch benchmark: many 1024x1024 photos through the command line with one shared model.

    .venv/bin/python benchmarks/bench_batch.py

Made here: 50 JPEG photos of 1024x1024 (crops of the 4096x4096 photo of bench_engine.py,
each shifted in colour). Each run is ``napari-kmeanz`` in a process of its own: fitting one
model on 10 and on 50 of them (k=8) and labelling each, then the same with ``--model`` (the
model saved by the first run, no fitting). Printed: the time per image, the peak RSS (which
must not grow with the number of images: 50 within 10% of 10), and the time with
``--model`` against fitting. Peak RSS is the process's own (its VmHWM), read as it ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUN = (
    "import sys, resource; from napari_kmeanz._cli import main; code = main(sys.argv[1:]);"
    "status = open('/proc/self/status').read().split('VmHWM:')[1].split()[0];"
    "print('PEAK', int(status) / 1024, file=sys.stderr); sys.exit(code)"
)


def make_images(folder: Path, n: int) -> list[Path]:
    from skimage import io

    from bench_engine import make_image

    folder.mkdir(parents=True, exist_ok=True)
    photo = make_image("photo4096")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"photo_{i:02d}.jpg"
        if not path.exists():
            y, x = rng.integers(0, 3072, size=2)
            crop = photo[y : y + 1024, x : x + 1024].astype(np.int16)
            shifted = np.clip(crop + rng.integers(-20, 21, size=3), 0, 255).astype(np.uint8)
            io.imsave(path, shifted, quality=92)
        paths.append(path)
    return paths


def run(args: list) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr)
    peak = float(done.stderr.split("PEAK")[1].split()[0])
    return {"s": seconds, "rss": peak}


def main() -> None:
    work = Path(tempfile.gettempdir()) / "napari-kmeanz-bench-batch"
    paths = make_images(work / "in", 50)
    model = work / "model.json"
    figures = {}
    for n in (10, 50):
        out = work / f"fit{n}"
        fit = run([*paths[:n], "-k", 8, "-o", out, "--save-model", model, "--quiet"])
        applied = run([*paths[:n], "--model", model, "-o", work / f"apply{n}", "--quiet"])
        report = json.loads((out / "batch_report.json").read_text())
        figures[n] = (fit, applied, report)
        print(
            f"{n} images of 1024x1024: fit and label {fit['s']:.1f} s ({fit['s'] / n:.2f} s an "
            f"image; fit {report['fit_s']:.1f} s), peak RSS {fit['rss']:.0f} MiB; with --model "
            f"{applied['s']:.1f} s ({applied['s'] / n:.2f} s an image, "
            f"{applied['s'] / fit['s']:.2f}x of fitting), peak RSS {applied['rss']:.0f} MiB",
            flush=True,
        )
    ratio = figures[50][0]["rss"] / figures[10][0]["rss"]
    print(f"peak RSS, 50 images against 10: {ratio:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
