"""The command line over many images: one model fitted on all of them (or read with
``--model``), then each image labelled by it, with one table of per-file cluster counts.

Memory does not grow with the number of images: each file is read once for the pooled
sample and once to be labelled, and let go. A file that cannot be read, or does not go with
the others, is reported in one line and skipped; the others are done, and the exit code is 1.
"""

from __future__ import annotations

import csv
import glob
import inspect
import sys
import time
from pathlib import Path

import numpy as np

from ._cli import (
    Progress,
    UsageError,
    _save_image,
    _suffix,
    _write_json,
    channel_option,
    kmeans_options,
    read_image,
)
from ._io import OutputFolder, atomic, save_palette_png
from ._params import layout_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")


def expand(inputs: list[str]) -> list[str]:
    """The images the inputs name: files and samples as they are, the image files of a
    folder (sorted), the matches of a quoted glob pattern (sorted)."""
    names = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(
                    f"folder {text!r} holds no image file ({', '.join(IMAGE_SUFFIXES)})"
                )
            names.extend(found)
        elif any(c in text for c in "*?[") and not path.exists():
            found = sorted(glob.glob(text))
            if not found:
                raise UsageError(f"no file matches {text!r}")
            names.extend(found)
        else:
            names.append(text)
    return names


def check_batch_options(args) -> None:
    for flag, value in (("--sweep", args.sweep), ("--mask", args.mask), ("-g", args.every_round)):
        if value:
            raise UsageError(f"{flag} cannot be used with several images")


def run_batch(args, names: list[str], outputs: OutputFolder) -> tuple[dict, list[str]]:
    """Fit (or load) one model, label every image; returns the report and the failures."""
    from ._many import counts_table, fit_pooled
    from ._result import load

    failures: list[str] = []
    progress = Progress(2 * len(names), f"{len(names)} images", args.quiet)
    start = time.perf_counter()
    if args.model is not None:
        model = load(args.model)
    else:
        model = fit_pooled(
            [_reader(name, args) for name in names], _arguments(args),
            on_image=lambda i: progress.show(i + 1, "sampling"),
            on_error=lambda i, err: failures.append(_failure(names[i], err)),
        )  # fmt: skip
    fitted = time.perf_counter() - start
    done, counts, stems = [], [], _stems(names)  # counts, not labels: memory stays flat
    for index, name in enumerate(names):
        progress.show(len(names) + index, f"labelling {Path(name).name}")
        if any(f.startswith(f"{name}:") for f in failures):
            continue
        try:
            counts.append(_label_one(name, stems[index], model, args, outputs))
            done.append(name)
        except (UsageError, ValueError) as err:
            failures.append(_failure(name, err))
    progress.show(2 * len(names), f"{len(done)} labelled")
    if not args.quiet:
        sys.stderr.write("\n")
    _write_table(outputs, counts_table(counts, done))
    if args.save_model is not None:
        model.save(outputs.place(args.save_model))
        outputs.wrote(args.save_model)
    report = _report(args, model, done, failures, fitted, time.perf_counter() - start)
    path = _write_json(outputs, "batch_report.json", report)
    report["files"] = {p.name: p.stat().st_size for p in outputs.written if p != path}
    return report, failures


def _reader(name: str, args):
    """A callable that reads the image when the fit comes to it (one at a time), its
    channels where the first image's are (a planar TIFF among PNGs, say)."""

    def read():
        image = read_image(name)[0]
        own, alpha = channel_option(args, name)
        mine = layout_of(image.shape, own, alpha).channel_axis
        first = image.ndim - 1 if args.channels == "auto" else args.channels  # the fit's
        if mine is not None and first is not None and mine != first % image.ndim:
            image = np.moveaxis(image, mine, first)
        return image

    return read


def _failure(name: str, err: Exception) -> str:
    return f"{name}: " + " ".join(str(err).split())


def _arguments(args) -> dict:
    """Every keyword argument of :func:`kmeans`, by name: the options' values, and the
    function's own defaults for the rest."""
    from ._kmeans import kmeans

    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(kmeans).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **kmeans_options(args), "n_clusters": args.clusters}


def _stems(names: list[str]) -> list[str]:
    """An output stem per image: its file's stem, numbered where two would be the same."""
    stems = [Path(name).stem for name in names]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


def labelled_by_model(image, model, args, mask=None, name: str | None = None):
    """The image labelled by ``model``, and the layout its outputs keep: the image's own,
    from the options (for the file ``name``: its own TIFF axes), so that a model fitted on
    channels last labels a planar TIFF's channels first, and back."""
    from ._result import predict

    if model.layout.channel_axis is None:
        return np.asarray(predict(image, model, mask=mask)), model.layout
    channels, alpha = (args.channels, args.alpha) if name is None else channel_option(args, name)
    layout = layout_of(image.shape, channels, alpha)
    return np.asarray(predict(image, model, mask=mask, channel_axis=layout.channel_axis)), layout


def _label_one(name: str, stem: str, model, args, outputs: OutputFolder) -> np.ndarray:
    """Label one image and write its outputs; returns its pixel count per cluster."""
    from ._result import recolor

    image, _ = read_image(name)
    labels, layout = labelled_by_model(image, model, args, name=name)
    painted = recolor(labels, model.colors, dtype=image.dtype, alpha=layout.alpha)
    if layout.channel_axis is None:
        painted = painted[..., 0]
    else:  # in the image's own layout (a (C, Y, X) TIFF's channels first), as for one image
        painted = np.moveaxis(painted, -1, layout.channel_axis)
    _save_image(outputs, f"{stem}_labels", labels.astype(np.uint8 if model.n_clusters < 256
                                                         else np.uint16))  # fmt: skip
    _save_image(outputs, f"{stem}_recoloured", painted)
    if _suffix(painted) == ".png":
        palette = outputs.path(f"{stem}_palette.png")
        if save_palette_png(palette, labels, model.colors, image.dtype):
            outputs.wrote(palette)
    return np.bincount(labels.ravel(), minlength=model.n_clusters + 1)[1:]


def _write_table(outputs: OutputFolder, table: dict) -> None:
    path = outputs.path("clusters.csv")
    with atomic(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "cluster", "count", "fraction"])
        for row in zip(table["image"], table["cluster"], table["count"], table["fraction"],
                       strict=True):  # fmt: skip
            writer.writerow([row[0], row[1], row[2], f"{row[3]:.6f}"])
    outputs.wrote(path)


def _report(args, model, done, failures, fitted, seconds) -> dict:
    from ._cli import _parameters

    return {
        "images": done,
        "failed": failures,
        "parameters": _parameters(args),
        "model": str(args.model) if args.model is not None else None,
        "fit_s": round(fitted, 4),
        "wall_time_s": round(seconds, 4),
        "per_image_s": round(seconds / max(len(done), 1), 4),
        "colors": np.round(model.colors, 3).tolist(),
    }
