"""Writing results to files, and drawing small plots: Pillow and numpy, no napari or Qt."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic(path: Path):
    """Yield a temporary name beside ``path``; rename it to ``path`` only when done."""
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def save_palette_png(path: Path, labels: np.ndarray, colors: np.ndarray, dtype) -> bool:
    """Cluster indices plus a palette as an 8-bit palette PNG (index 0, unclustered pixels,
    transparent); False when the labels are not 2-D or need more than 256 palette entries."""
    from PIL import Image

    if labels.ndim != 2 or len(colors) + 1 > 256:
        return False
    from ._kmeans import full_scale

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


def elbow_plot(ks, inertias, suggested: int, size=(640, 420)) -> np.ndarray:
    """Inertia over k, the suggested k marked."""
    title = f"inertia over k (suggested k = {suggested})"
    return line_plot(ks, inertias, title, "k", suggested, size=size)


def rounds_plot(history, size=(640, 420)) -> np.ndarray:
    """Inertia over the rounds of a run."""
    rounds = range(1, len(history) + 1)
    return line_plot(rounds, history, "inertia over rounds", "round", size=size)
