"""napari-kmeanz: segment and colour-quantise images by k-means clustering of their pixels.

The compute core (:func:`kmeans`, :func:`iter_kmeans`, :func:`predict`, :func:`recolor`, and
:func:`clean` and :func:`objects` to turn clusters into a segmentation) needs numpy, dask,
scikit-image and threadpoolctl; importing this package loads neither napari nor Qt. A run
started with ``cancel=`` stops with :class:`Cancelled` once that event is set.
"""

from importlib.metadata import PackageNotFoundError, version

from ._features import FeatureSpace
from ._kmeans import iter_kmeans, kmeans
from ._many import cluster_table
from ._result import KMeansResult, KMeansState, load, margins, predict, recolor
from ._segment import Objects, clean, objects
from ._watch import Cancelled

try:
    __version__ = version("napari-kmeanz")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "unknown"

__all__ = [
    "Cancelled",
    "FeatureSpace",
    "KMeansResult",
    "KMeansState",
    "Objects",
    "__version__",
    "clean",
    "cluster_table",
    "iter_kmeans",
    "kmeans",
    "load",
    "margins",
    "objects",
    "predict",
    "recolor",
]
