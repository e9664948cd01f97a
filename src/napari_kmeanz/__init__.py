"""napari-kmeanz: segment and colour-quantise images by k-means clustering of their pixels.

The compute core (:func:`kmeans`, :func:`iter_kmeans`, :func:`predict`, :func:`recolor`) needs
numpy, dask and threadpoolctl only; importing this package loads neither napari nor Qt. A run
started with ``cancel=`` stops with :class:`Cancelled` once that event is set.
"""

from importlib.metadata import PackageNotFoundError, version

from ._kmeans import (
    Cancelled,
    KMeansResult,
    KMeansState,
    iter_kmeans,
    kmeans,
    predict,
    recolor,
)
from ._pixels import FeatureSpace

try:
    __version__ = version("napari-kmeanz")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "unknown"

__all__ = [
    "Cancelled",
    "FeatureSpace",
    "KMeansResult",
    "KMeansState",
    "__version__",
    "iter_kmeans",
    "kmeans",
    "predict",
    "recolor",
]
