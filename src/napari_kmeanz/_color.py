"""sRGB <-> CIE L*a*b* (D65 white, 2-degree observer), in numpy, the conversion scikit-image's
``rgb2lab``/``lab2rgb`` make. Lab is perceptual: equal distances look about equally different,
which is what k-means on colours assumes."""

from __future__ import annotations

import numpy as np

_RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6 / 29


def rgb_to_lab(rgb: np.ndarray, top: float) -> np.ndarray:
    """(n, 3) sRGB values with ``top`` as full scale (255 for 8-bit) -> (n, 3) L*, a*, b*."""
    c = np.clip(np.asarray(rgb, dtype=np.float64) / top, 0.0, 1.0)
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4 / 29)
    return np.stack(
        [116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1
    )


def lab_to_rgb(lab: np.ndarray, top: float) -> np.ndarray:
    """(n, 3) L*, a*, b* -> (n, 3) sRGB values with ``top`` as full scale, clipped to range."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], axis=1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    c = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return np.clip(c, 0.0, 1.0) * top
