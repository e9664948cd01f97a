"""Figures about a clustering: how much smaller the image is as indices plus a palette, how
many distinct colours it had, and which k a sweep suggests. numpy only."""

from __future__ import annotations

import math

import numpy as np

from ._result import KMeansResult


def distinct_colors(image: np.ndarray, channel_axis: int | None) -> int:
    """Number of distinct pixel values (colours) of an in-memory image."""
    values = np.asarray(image)
    values = values[..., None] if channel_axis is None else np.moveaxis(values, channel_axis, -1)
    flat = values.reshape(-1, values.shape[-1])
    if flat.dtype.kind in "iu" and flat.dtype.itemsize * flat.shape[1] <= 3:
        codes = np.zeros(len(flat), dtype=np.int64)
        for column in flat.T:
            codes = (codes << (8 * flat.dtype.itemsize)) | (column.astype(np.int64) - column.min())
        return int(np.count_nonzero(np.bincount(codes)))
    rows = np.ascontiguousarray(flat).view(
        np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))
    )
    return len(np.unique(rows))


def compression(result: KMeansResult, n_channels: int | None = None) -> dict:
    """How much smaller the image is as cluster indices plus a palette than as raw pixels.

    Parameters
    ----------
    result : KMeansResult
    n_channels : int, optional
        Channels of a raw pixel, alpha included; default the result's own (plus alpha).

    Returns
    -------
    dict
        ``raw_bytes`` (pixels x channels x bytes per value), ``index_bits`` (bits per pixel
        to tell k clusters, and label 0 if some pixels were left out), ``indices_bytes``
        (packed indices), ``palette_bytes`` (one colour per index, in the image's dtype),
        ``ratio`` (raw / (indices + palette)).
    """
    n_pixels = int(np.prod(result.labels.shape))
    channels = n_channels or (result.feature_space.n_channels + result.layout.alpha)
    itemsize = np.dtype(result.dtype).itemsize
    entries = result.n_clusters + (int(np.asarray(result.counts).sum()) < n_pixels)
    bits = max(1, math.ceil(math.log2(entries)))
    raw = n_pixels * channels * itemsize
    indices = math.ceil(n_pixels * bits / 8)
    palette = entries * channels * itemsize
    return {
        "raw_bytes": raw,
        "index_bits": bits,
        "indices_bytes": indices,
        "palette_bytes": palette,
        "ratio": raw / (indices + palette),
    }


def suggest_k(ks, inertias) -> int:
    """The elbow of an inertia curve: the k farthest below the chord from the first point to
    the last, with both axes scaled to 0..1 (the "kneedle" rule of Satopää et al., 2011)."""
    ks = np.asarray(ks, dtype=np.float64)
    inertias = np.asarray(inertias, dtype=np.float64)
    if len(ks) < 3:
        return int(ks[np.argmin(inertias)]) if len(ks) else 0
    x = (ks - ks[0]) / ((ks[-1] - ks[0]) or 1.0)
    y = (inertias - inertias.min()) / ((inertias.max() - inertias.min()) or 1.0)
    chord = y[0] + (y[-1] - y[0]) * x
    return int(ks[np.argmax(chord - y)])
