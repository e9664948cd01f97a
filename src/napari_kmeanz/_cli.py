"""The ``napari-kmeanz`` command: cluster an image file or a bundled sample, write the results.

Everything the original scripts did: a k-means in the joint (position, colour) space with
``-k`` clusters and ``-r`` rounds, ``-s`` for the spatial weight, ``-g`` to save the image after
every round, a k sweep with an elbow plot and an animation, and a compression report. It
imports neither napari nor Qt.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._defaults import CLI
from ._io import OutputFolder, atomic, elbow_plot, read_picture, save_palette_png, tiff_channels

SAMPLES = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "coffee", "coins", "grass",
    "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina",
    "rocket", "text",
)  # fmt: skip
TIFF = (".tif", ".tiff")


class UsageError(ValueError):
    """Bad input: reported as one line on stderr with exit code 2."""


class _Formatter(argparse.HelpFormatter):
    def _split_lines(self, text, width):  # never break "kmeanz-output" or "k-means++"
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints the usage too)
        raise UsageError(message)


def _whole_number(minimum: int):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {minimum}, got {text!r}"
            ) from None
        return value

    return parse


_positive_int = _whole_number(1)
_seed = _whole_number(0)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _sigma(text: str) -> float | tuple[float, ...]:
    """A number >= 0, or one per spatial axis separated by commas (``1,2,2``)."""
    values = tuple(_non_negative(part) for part in text.split(","))
    return values[0] if len(values) == 1 else values


def _features(text: str) -> list[str]:
    from ._filters import KINDS

    kinds = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"expected feature kinds among {', '.join(KINDS)} separated by commas, got {text!r}"
        )
    return kinds


def _channel_axis(text: str) -> int | str:
    """An axis (an int), or 'none': no channel axis (a grey image or stack)."""
    if text.lower() == "none" or text.removeprefix("-").isdigit():
        return "none" if text.lower() == "none" else int(text)
    raise argparse.ArgumentTypeError(f"expected an axis (an integer) or none, got {text!r}")


def _k_range(text: str) -> list[int]:
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KMIN:KMAX (like 2:15), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= KMIN <= KMAX, got {text!r}")
    return list(range(low, high + 1))


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--save-model", type=Path, metavar="FILE",
                   help="also write the fitted model (JSON) to FILE, to apply it to other "
                   "images with --model")  # fmt: skip
    p.add_argument("--model", type=Path, metavar="FILE",
                   help="label the image with a saved model instead of fitting one (-k, -r, "
                   "-s, --sigma and --features come from the model)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="napari-kmeanz",
        formatter_class=_Formatter,
        description=(
            "Cluster the pixels of an image by k-means in a joint (position, colour) space and "
            "write the labels, the recoloured image, a palette PNG (cluster indices plus a "
            "palette) and a JSON report."
        ),
        epilog=f"Bundled samples (scikit-image, no download): {', '.join(SAMPLES)}.",
    )
    p.add_argument(
        "images", nargs="+", metavar="IMAGE",
        help="an image file scikit-image reads (JPEG; PNG, also RGBA and palette; TIFF, also "
        "16-bit and stacks) or the name of a bundled sample; several of them, folders or "
        "quoted patterns ('slides/*.tif') fit one model on all and label each",
    )  # fmt: skip
    k, rounds = CLI["n_clusters"], CLI["max_iter"]  # why these: see _defaults
    p.add_argument("-k", "--clusters", type=_positive_int, default=k, metavar="K",
                   help=f"number of clusters (default: {k})")  # fmt: skip
    p.add_argument("-r", "--rounds", type=_positive_int, default=rounds, metavar="ROUNDS",
                   help=f"maximum rounds over all pixels (default: {rounds})")  # fmt: skip
    p.add_argument("-o", "--outdir", type=Path, default=Path("kmeanz-output"), metavar="OUTDIR",
                   help="output folder, created if missing (default: kmeanz-output)")  # fmt: skip
    p.add_argument("-s", "--spatial", type=_non_negative, default=0.0, metavar="SPATIAL",
                   help="spatial weight: 0 clusters by colour alone; 1 puts pixel position on "
                   "the same footing as colour (position spans the value range, 0-255 for an "
                   "8-bit image: the original script's -s) (default: 0)")  # fmt: skip
    p.add_argument("-g", "--every-round", action="store_true",
                   help="also save the recoloured image after every round")  # fmt: skip
    p.add_argument("--colour-space", "--color-space", dest="color_space",
                   choices=("rgb", "lab"), default="rgb",
                   help="cluster RGB colours as they are, or as CIE Lab, a perceptual space "
                   "(default: rgb)")  # fmt: skip
    p.add_argument("--sigma", type=_sigma, metavar="SIGMA",
                   help="Gaussian scale of the value features in pixels, or one per axis "
                   "(2,1,1): smooths noisy images before clustering (default: none)")  # fmt: skip
    p.add_argument("--features", type=_features, metavar="KINDS",
                   help="value features at scale SIGMA, separated by commas: value, gaussian, "
                   "gradient, laplace, std (texture), hessian (default: gaussian with "
                   "--sigma, value without)")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help="random seed, >= 0 (default: 0)")
    p.add_argument("--init", choices=("k-means++", "random"), default="k-means++",
                   help="initialisation (default: k-means++)")  # fmt: skip
    p.add_argument("--tol", type=_non_negative, default=1e-4,
                   help="stop when a round lowers the inertia by less than this fraction "
                   "(default: 1e-4; 0 runs all rounds)")  # fmt: skip
    p.add_argument("--channel-axis", type=_channel_axis, metavar="AXIS",
                   help="the image's axis of channels (0 for a (C, Y, X) array; none for a "
                   "grey image or stack) (default: a TIFF's channels where its metadata "
                   "names them, else the last axis of an RGB(A) picture, else none)")  # fmt: skip
    p.add_argument("--mask", type=Path, metavar="MASK",
                   help="an image of the same height and width: only its non-zero pixels "
                   "are clustered")  # fmt: skip
    p.add_argument("--sweep", type=_k_range, metavar="KMIN:KMAX",
                   help="cluster for every k in the range instead of one k: writes the "
                   "inertia per k, an elbow plot (PNG), the suggested k and an animation "
                   "(GIF)")  # fmt: skip
    _model_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# -- reading and writing ------------------------------------------------------------------------


def read_image(name: str) -> tuple[np.ndarray, str]:
    """The pixels of a file, or of a bundled sample, and a stem for the output names."""
    path = Path(name)
    if path.exists():
        try:
            if path.suffix.lower() in TIFF:
                import tifffile

                image = tifffile.imread(path)
            else:
                image = read_picture(path)
        except Exception as err:  # any reader failure is a bad input file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"cannot read image {name!r}: {reason}") from err
        return np.asarray(image), path.stem
    if name in SAMPLES:
        from skimage import data

        return getattr(data, name)(), name
    raise UsageError(
        f"no such image file or bundled sample: {name!r} (samples: {', '.join(SAMPLES)})"
    )


def channel_option(args, first: str) -> tuple[int | str, bool | None]:
    """The ``channel_axis`` and ``alpha`` the images are clustered with: ``--channel-axis``;
    else the channels a TIFF's metadata names (the first image's, for several: see
    :func:`_io.tiff_channels`); else 'auto'."""
    if args.channel_axis is not None:
        return (None if args.channel_axis == "none" else args.channel_axis), None
    path = Path(first)
    if path.suffix.lower() in TIFF and path.is_file():
        try:
            axis, alpha = tiff_channels(path)
        except Exception:  # an unreadable file: said when it is read
            axis, alpha = None, None
        return ("auto" if axis is None else axis), alpha
    return "auto", None


def _save_image(outputs: OutputFolder, stem: str, array: np.ndarray) -> Path:
    """Write ``array`` as ``stem`` plus the suffix of a format that holds it as it is."""
    path = outputs.path(f"{stem}{_suffix(array)}")
    with atomic(path) as temporary:
        if path.suffix in TIFF:
            import tifffile

            tifffile.imwrite(temporary, array)
        else:
            from skimage import io

            io.imsave(temporary, array, check_contrast=False)
    outputs.wrote(path)
    return path


def _write_json(outputs: OutputFolder, name: str, report: dict) -> Path:
    path = outputs.path(name)
    with atomic(path) as temporary:
        temporary.write_text(json.dumps(report, indent=2))
    outputs.wrote(path)
    return path


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, label: str, quiet: bool):
        self.total, self.label, self.quiet = total, label, quiet

    def show(self, done: int, note: str = "") -> None:
        if self.quiet:
            return
        width = 24
        filled = int(width * min(done, self.total) / self.total)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{self.total} {note}   ")
        sys.stderr.flush()

    def finish(self, result) -> None:
        """The last line: all rounds done, or converged early."""
        done = self.total if result.converged else result.n_iter
        rounds = f"{result.n_iter} round{'s' * (result.n_iter != 1)}"
        verdict = f"converged after {rounds}, " if result.converged else ""
        self.show(done, f"{verdict}inertia {result.inertia:.4g}")
        if not self.quiet:
            sys.stderr.write("\n")


# -- the runs -----------------------------------------------------------------------------------


def kmeans_options(args) -> dict:
    """The keyword arguments of :func:`napari_kmeanz.kmeans` that the options give (all but
    the image, k and the mask)."""
    return {
        "spatial_weight": args.spatial, "color_space": args.color_space, "sigma": args.sigma,
        "features": args.features, "init": args.init, "max_iter": args.rounds,
        "tol": args.tol, "random_state": args.seed, "channel_axis": args.channels,
        "alpha": args.alpha,
    }  # fmt: skip


def _cluster(image, k, args, mask, progress: Progress, on_round: Callable | None = None):
    from ._kmeans import iter_kmeans

    states = iter_kmeans(image, k, mask=mask, **kmeans_options(args))
    for state in states:
        if state.done:
            return state.result
        progress.show(state.round, f"inertia {state.inertia_history[-1]:.4g}")
        if on_round is not None:
            on_round(state)
    raise AssertionError("unreachable")  # pragma: no cover


def _suffix(array: np.ndarray) -> str:
    """PNG where Pillow writes the array at its own bit depth (8-bit grey, RGB and RGBA;
    16-bit grey), TIFF for everything else (16-bit colour, other dtypes, stacks)."""
    grey = array.ndim == 2
    colour = array.ndim == 3 and array.shape[-1] in (3, 4)
    if (array.dtype == np.uint8 and (grey or colour)) or (array.dtype == np.uint16 and grey):
        return ".png"
    return ".tif"


def run_single(args, image, stem, mask, outputs: OutputFolder) -> dict:
    from ._params import layout_of
    from ._report import compression, distinct_colors
    from ._result import recolor

    progress = Progress(args.rounds, f"k-means k={args.clusters}", args.quiet)

    layout = layout_of(image.shape, args.channels, args.alpha)

    def each_round(state):
        painted = recolor(state.labels(), state.colors, dtype=image.dtype, alpha=layout.alpha)
        if layout.channel_axis is None:
            painted = painted[..., 0]
        elif layout.channel_axis != layout.ndim - 1:  # in the file's layout, as the result
            painted = np.moveaxis(painted, -1, layout.channel_axis)
        _save_image(outputs, f"{stem}_round_{state.round:03d}", painted)

    start = time.perf_counter()
    if args.model is not None:
        result = _apply_model(image, args, mask)
    else:
        result = _cluster(
            image, args.clusters, args, mask, progress, each_round if args.every_round else None
        )
    seconds = time.perf_counter() - start
    if args.model is None:
        progress.finish(result)
    elif not args.quiet:
        sys.stderr.write(f"labelled by the model {str(args.model)!r} (k={result.n_clusters})\n")

    labels = np.asarray(result.labels)
    labels_out = labels.astype(np.uint8 if result.n_clusters < 256 else np.uint16)
    painted = np.asarray(result.recolor())
    _save_image(outputs, f"{stem}_labels", labels_out)
    _save_image(outputs, f"{stem}_recoloured", painted)
    palette_path = outputs.path(f"{stem}_palette.png")  # (grey or colour: what a PNG shows)
    if _suffix(painted) == ".png" and save_palette_png(
        palette_path, labels, result.colors, image.dtype
    ):
        outputs.wrote(palette_path)
    channel_axis = result.layout.channel_axis
    report = {
        "image": args.image,
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "parameters": _parameters(args),
        **_fit_figures(result, args.model),
        "wall_time_s": round(seconds, 4),
        "colors": np.round(result.colors, 3).tolist(),
        "pixels_per_cluster": result.counts.tolist(),
        "unique_colors_before": distinct_colors(image, channel_axis),
        "unique_colors_after": distinct_colors(painted, channel_axis),
        "compression": compression(result),
    }
    if args.save_model is not None:  # with the outputs: gone again if the run fails
        result.save(outputs.place(args.save_model))
        outputs.wrote(args.save_model)
    return _finish_report(outputs, f"{stem}_report.json", report)


def _fit_figures(result, model_path) -> dict:
    """The report's figures of the fit: this run's, or with ``--model`` the model's own
    (under ``model_fit``: they are not this image's)."""
    figures = {
        "rounds_run": result.n_iter,
        "converged": result.converged,
        "inertia": result.inertia,
        "inertia_history": result.inertia_history.tolist(),
    }
    if model_path is None:
        return figures
    return {"model": str(model_path), "model_fit": figures}


def _apply_model(image, args, mask):
    """The image labelled by the model saved at ``--model``, as a result (the model's fit
    figures, this image's labels, pixel counts and layout)."""
    from dataclasses import replace

    from ._batch import labelled_by_model
    from ._result import load

    model = load(args.model)
    labels, layout = labelled_by_model(image, model, args, mask)
    counts = np.bincount(labels.ravel(), minlength=model.n_clusters + 1)[1:]
    return replace(model, labels=labels, counts=counts.astype(np.int64), layout=layout)


def run_sweep(args, image, stem, mask, outputs: OutputFolder) -> dict:
    from ._lloyd import TooFewDistinctPoints
    from ._report import suggest_k

    ks, stopped = args.sweep, None
    results, frames = [], []
    start = time.perf_counter()
    for k in ks:
        progress = Progress(args.rounds, f"k-means k={k}", args.quiet)
        try:
            result = _cluster(image, k, args, mask, progress)
        except TooFewDistinctPoints as err:  # the sweep ends at the distinct points
            if not results:
                raise
            ks, stopped = ks[: len(results)], f"stopped at k={ks[len(results) - 1]}: {err}"
            sys.stderr.write(f"\nnapari-kmeanz: the sweep {stopped}\n")
            break
        progress.finish(result)
        results.append(result)
        painted = np.asarray(result.recolor())
        frames.append(_preview_frame(painted, image.dtype, result.layout.channel_axis is not None))
    seconds = time.perf_counter() - start
    inertias = [r.inertia for r in results]
    suggested = suggest_k(ks, inertias)
    _save_image(outputs, f"{stem}_elbow", elbow_plot(ks, inertias, suggested))
    _save_gif(outputs, f"{stem}_sweep.gif", frames, ks)
    report = {
        "image": args.image,
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "parameters": _parameters(args),
        "k": ks,
        "inertia": inertias,
        "rounds_run": [r.n_iter for r in results],
        "suggested_k": suggested,
        "suggestion_rule": "the k farthest below the chord joining the first and last points "
        "of the inertia curve, both axes scaled to 0..1 (kneedle)",
        "wall_time_s": round(seconds, 4),
    }
    if stopped is not None:
        report["stopped"] = stopped
    return _finish_report(outputs, f"{stem}_sweep_report.json", report)


def _preview_frame(painted: np.ndarray, dtype, channels: bool = False) -> np.ndarray:
    """An 8-bit RGB frame for the animation (the middle plane of a stack; the first channel
    of channels that are not RGB(A))."""
    if channels and painted.shape[-1] not in (3, 4):
        painted = painted[..., 0]
    while painted.ndim > 3 or (painted.ndim == 3 and painted.shape[-1] not in (3, 4)):
        painted = painted[painted.shape[0] // 2]
    from ._params import full_scale

    frame = np.clip(painted.astype(np.float64) / full_scale(dtype) * 255, 0, 255)
    frame = frame.astype(np.uint8)
    if frame.ndim == 2:
        frame = np.stack([frame] * 3, axis=-1)
    return frame[..., :3]


def _save_gif(outputs: OutputFolder, name: str, frames: list[np.ndarray], ks) -> None:
    from PIL import Image, ImageDraw

    path = outputs.path(name)
    pictures = []
    for frame, k in zip(frames, ks, strict=True):
        picture = Image.fromarray(frame)
        ImageDraw.Draw(picture).text((8, 8), f"k={k}", fill=(255, 255, 255))
        pictures.append(picture)
    with atomic(path) as temporary:
        pictures[0].save(
            temporary, format="GIF", save_all=True, append_images=pictures[1:], duration=600,
            loop=0,
        )  # fmt: skip
    outputs.wrote(path)


def _parameters(args) -> dict:
    return {
        "k": args.clusters if args.sweep is None else None,
        "sweep": None if args.sweep is None else [args.sweep[0], args.sweep[-1]],
        "rounds": args.rounds,
        "spatial_weight": args.spatial,
        "color_space": args.color_space,
        "sigma": args.sigma,
        "features": args.features,
        "every_round": args.every_round,
        "seed": args.seed,
        "init": args.init,
        "tol": args.tol,
        "mask": None if args.mask is None else str(args.mask),
        "channel_axis": args.channels,
    }


def _finish_report(outputs: OutputFolder, name: str, report: dict) -> dict:
    report["files"] = {p.name: p.stat().st_size for p in outputs.written}
    path = _write_json(outputs, name, report)
    report["files"][path.name] = path.stat().st_size
    return report


def _check_model_options(args) -> None:
    if args.model is not None and args.sweep is not None:
        raise UsageError("--model labels with a saved model: it cannot be combined with --sweep")
    if args.model is not None and args.model.is_dir():
        raise UsageError(f"--model {str(args.model)!r} is a folder, not a model file")
    if args.model is not None and not args.model.is_file():
        raise UsageError(f"no such model file: {str(args.model)!r}")
    if args.save_model is not None:
        if args.save_model.is_dir():
            raise UsageError(f"--save-model {str(args.save_model)!r} is a folder, not a file")
        OutputFolder(args.save_model.parent).check()


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that a run unwinds like on Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv=None) -> int:
    """Entry point of the ``napari-kmeanz`` command; returns the exit code.

    Bad input: one line on stderr and 2. Ctrl-C (SIGINT): "interrupted" and 130; SIGTERM:
    "terminated" and 143. A run that does not finish leaves no file behind.
    """
    outputs = None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = parser().parse_args(argv)
        outputs = OutputFolder(args.outdir)
        outputs.check()  # before any work
        _check_model_options(args)
        from . import _batch, _jit  # (_batch builds on this module)

        _jit.warm_up()  # the compiled kernels, loaded on a thread while images are read

        names = _batch.expand(args.images)
        args.channels, args.alpha = channel_option(args, names[0])
        if len(names) > 1 or names[0] != args.images[0]:
            return _run_batch(args, names, outputs)
        args.image = names[0]
        image, stem = read_image(args.image)
        mask = None
        if args.mask is not None:
            mask_pixels, _ = read_image(str(args.mask))
            if mask_pixels.ndim == 3 and mask_pixels.shape[-1] in (3, 4) and image.ndim <= 3:
                mask_pixels = mask_pixels[..., :3].any(axis=-1)  # an RGB(A) mask picture
            mask = mask_pixels != 0
        run = run_single if args.sweep is None else run_sweep
        report = run(args, image, stem, mask, outputs)
    except (UsageError, ValueError, TypeError, OSError) as err:
        # bad arguments, the engine's checks of the parameters and data, unwritable outputs
        return _fail(outputs, "error: " + " ".join(str(err).split()), 2)  # always one line
    except KeyboardInterrupt:
        return _fail(outputs, "interrupted", 130)
    except _Terminated:
        return _fail(outputs, "terminated", 143)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not args.quiet:
        names = ", ".join(report["files"])
        print(f"wrote {names} to {args.outdir}/", file=sys.stderr)
    return 0


def _run_batch(args, names, outputs) -> int:
    """Several images: one model, each labelled; 1 when some were skipped."""
    from . import _batch

    _batch.check_batch_options(args)
    report, failures = _batch.run_batch(args, names, outputs)
    for failure in failures:
        print(f"napari-kmeanz: skipped {failure}", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {len(report['files'])} files for {len(report['images'])} images to "
              f"{args.outdir}/", file=sys.stderr)  # fmt: skip
    return 1 if failures else 0


def _fail(outputs: OutputFolder | None, message: str, code: int) -> int:
    """Undo the run's files and say why in one line (after a progress bar's line, if any)."""
    if outputs is not None:
        outputs.rollback()
    after_progress = "\n" if code != 2 else ""
    print(f"{after_progress}napari-kmeanz: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
