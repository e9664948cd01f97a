"""Pictures in, results out: Pillow images as pixels, files written, small plots drawn.

Pillow and numpy, no napari or Qt."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

# Picture modes whose channels are not grey, RGB or RGBA, read as what they show: CMYK as
# RGB (its 4 channels were taken for RGBA, K for alpha), a palette as its colours (not its
# indices), grey with alpha as RGBA (grey in three equal channels, which cluster as the grey
# does).
CONVERTED_MODES = {"CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "LA": "RGBA",
                   "La": "RGBA", "PA": "RGBA", "P": None}  # fmt: skip


def is_picture(image) -> bool:
    """Whether ``image`` is a Pillow image (without importing Pillow)."""
    return type(image).__module__.startswith("PIL.") and hasattr(image, "mode")


def picture_pixels(picture) -> np.ndarray:
    """A Pillow image's pixels as grey, RGB or RGBA (see CONVERTED_MODES)."""
    if picture.mode in CONVERTED_MODES:
        target = CONVERTED_MODES[picture.mode]
        if target is None:  # a palette: its colours, and transparency where it has one
            target = "RGBA" if "transparency" in picture.info else "RGB"
        picture = picture.convert(target)
    return np.asarray(picture)


def read_picture(path: Path) -> np.ndarray:
    """A picture file's pixels as grey, RGB or RGBA (see CONVERTED_MODES)."""
    from PIL import Image

    with Image.open(path) as picture:
        if picture.mode in CONVERTED_MODES and getattr(picture, "n_frames", 1) == 1:
            return picture_pixels(picture)
    from skimage import io

    return io.imread(path)


def tiff_channels(path) -> tuple[int | None, bool | None]:
    """The axis of a TIFF's channels where its metadata names one, else None, and whether
    its last channel is alpha (None: the usual guess).

    The channels are 'C' in the axes of its first series (as ImageJ and OME write a
    (C, Y, X) stack), or its samples 'S' when they come first (planar RGB, (3, Y, X)) or are
    not 3 or 4 (grey and alpha); 3 or 4 samples last are the usual last axis of RGB(A). An
    extra sample is alpha where the file says so.
    """
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0] if tiff.series else None
        axes = series.axes if series is not None else ""
        extra = tuple(series.keyframe.extrasamples) if series is not None else ()
    if "C" in axes and "S" not in axes:
        return axes.index("C"), None
    # an extra sample is alpha where the file says so (associated or unassociated alpha)
    alpha = int(extra[-1]) in (1, 2) if extra else None
    if "S" in axes:
        at = axes.index("S")
        if at < len(axes) - 1 or series.shape[at] not in (3, 4):  # planar, or grey + alpha
            return at, bool(alpha)
    return None, alpha


@contextlib.contextmanager
def atomic(path: Path):
    """Yield a temporary name beside ``path``, unique to this writer; rename it to ``path``
    only when done (two writers to one output never share a temporary file)."""
    path = Path(path)
    if path.is_dir():  # (the temporary file would go beside the folder, the rename fail)
        raise IsADirectoryError(f"{str(path)!r} is a folder: give a file name to write.")
    if not path.parent.is_dir():  # (mkstemp would name its temporary file)
        raise FileNotFoundError(
            f"{str(path)!r} cannot be written: no folder {str(path.parent)!r}."
        )
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}",
                                    dir=path.parent)  # fmt: skip
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


class OutputFolder:
    """The files one run writes into a folder: all of them, or none.

    :meth:`check` finds out before any work whether the folder can be made and written;
    :meth:`path` makes it (and its missing parents) when the first file is written;
    :meth:`rollback` removes every file written so far and the folders it made, so a run
    that fails, or is stopped, leaves nothing behind.

    A file is the run's from the moment it is renamed into place, which comes before
    :meth:`wrote` can say so: a signal between the two would leave it behind (and with it
    the folder). So :meth:`place` notes what each path held before, and :meth:`rollback`
    also removes a path placed but not yet said written that holds another file now.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.written: list[Path] = []
        self._made: list[Path] = []
        self._placed: dict[Path, tuple | None] = {}  # path: what it held when placed

    def check(self) -> None:
        """Raise OSError, naming the folder, when it cannot be made or written."""
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"output folder {str(self.folder)!r} is a file")
        existing = self.folder
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise NotADirectoryError(
                f"output folder {str(self.folder)!r} cannot be made: {str(existing)!r} is a file"
            )
        try:  # a real write: access() says yes to root even on a read-only file system
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as err:
            raise OSError(
                f"output folder {str(self.folder)!r} cannot be written ({err.strerror})"
            ) from None

    def path(self, name: str) -> Path:
        """Where to write the file ``name``; the folder is made if it is missing."""
        return self.place(self.folder / name)

    def place(self, path: Path) -> Path:
        """``path`` (in this folder or elsewhere, as a model file), its missing folders made;
        :meth:`rollback` removes them again."""
        missing = []
        folder = Path(path).parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for made in reversed(missing):
            made.mkdir()
            self._made.append(made)
        self._placed.setdefault(Path(path), _held(path))
        return Path(path)

    def wrote(self, path: Path) -> None:
        self._placed.pop(Path(path), None)
        self.written.append(Path(path))

    def rollback(self) -> None:
        for path, before in self._placed.items():  # (renamed into place, not yet said so)
            now = _held(path)
            if now is not None and now != before:
                self.written.append(path)
        for path in self.written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.written, self._made, self._placed = [], [], {}


def _held(path: Path) -> tuple | None:
    """Which file ``path`` holds (device, inode, size, modification time), None if none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns


def save_palette_png(path: Path, labels: np.ndarray, colors: np.ndarray, dtype) -> bool:
    """Cluster indices plus a palette as an 8-bit palette PNG (index 0, unclustered pixels,
    transparent); False when the labels are not 2-D or need more than 256 palette entries."""
    from PIL import Image

    if labels.ndim != 2 or len(colors) + 1 > 256:
        return False
    from ._params import full_scale

    rgb = np.clip(np.asarray(colors) / full_scale(dtype) * 255, 0, 255).round().astype(np.uint8)
    if rgb.shape[1] < 3:
        rgb = np.repeat(rgb[:, :1], 3, axis=1)
    palette = np.zeros((len(rgb) + 1, 3), np.uint8)
    palette[1:] = rgb[:, :3]
    picture = Image.fromarray(np.asarray(labels).astype(np.uint8), mode="P")
    picture.putpalette(palette.ravel().tolist())
    with atomic(Path(path)) as temporary:
        picture.save(temporary, format="PNG", optimize=True, transparency=0)
    return True


def line_plot(xs, ys, title: str, xlabel: str, mark=None, size=(640, 420)) -> np.ndarray:
    """A line plot of ``ys`` over ``xs`` (the point at ``x == mark`` in red), as RGB."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 90, 20, 30, 50
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    x_values = np.asarray(xs, dtype=float)
    values = np.asarray(ys, dtype=float)
    span_x = (x_values.max() - x_values.min()) or 1.0
    low, high = float(values.min()), float(values.max())
    span_y = (high - low) or 1.0

    def xy(x, y):
        return (
            left + (x - x_values.min()) / span_x * (width - left - right),
            top + (high - y) / span_y * (height - top - bottom),
        )

    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], "black")
    points = [xy(x, y) for x, y in zip(x_values, values, strict=True)]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2)
    step = max(1, len(points) // 15)
    for i, ((px, py), x) in enumerate(zip(points, xs, strict=True)):
        colour = (214, 39, 40) if mark is not None and x == mark else (31, 119, 180)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        if i % step == 0:
            draw.text((px - 6, height - bottom + 8), str(x), fill="black")
    draw.text((left, 8), title, fill="black")
    draw.text((width // 2 - 10, height - 20), xlabel, fill="black")
    draw.text((4, top), f"{high:.4g}", fill="black")
    draw.text((4, height - bottom - 12), f"{low:.4g}", fill="black")
    return np.asarray(picture)


def fractions_plot(fractions: np.ndarray, colors: np.ndarray, size=(640, 420)) -> np.ndarray:
    """Each cluster's fraction of the clustered pixels over the frames, one line per cluster
    in its colour (``colors``: RGB in 0..1, one row per cluster), as RGB."""
    from PIL import Image, ImageDraw

    width, height = size
    left, right, top, bottom = 50, 20, 30, 40
    picture = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(picture)
    n_frames = len(fractions)

    def xy(frame, fraction):
        x = left + (frame / max(n_frames - 1, 1)) * (width - left - right)
        return x, top + (1.0 - fraction) * (height - top - bottom)

    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], "black")
    for cluster in range(fractions.shape[1]):
        colour = tuple(round(255 * float(c)) for c in np.clip(colors[cluster][:3], 0, 0.85))
        points = [xy(f, fractions[f, cluster]) for f in range(n_frames)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        else:
            draw.ellipse([points[0][0] - 3, points[0][1] - 3, points[0][0] + 3,
                          points[0][1] + 3], fill=colour)  # fmt: skip
    draw.text((left, 8), "fraction of each cluster over frames", fill="black")
    draw.text((width // 2 - 10, height - 20), "frame", fill="black")
    draw.text((4, top), "1", fill="black")
    draw.text((4, height - bottom - 12), "0", fill="black")
    draw.text((width - right - 20, height - bottom + 6), str(n_frames - 1), fill="black")
    return np.asarray(picture)


def elbow_plot(ks, inertias, suggested: int, size=(640, 420)) -> np.ndarray:
    """Inertia over k, the suggested k marked."""
    title = f"inertia over k (suggested k = {suggested})"
    return line_plot(ks, inertias, title, "k", suggested, size=size)


def rounds_plot(history, size=(640, 420)) -> np.ndarray:
    """Inertia over the rounds of a run."""
    rounds = range(1, len(history) + 1)
    return line_plot(rounds, history, "inertia over rounds", "round", size=size)
