"""The engine's one internal interface, below the public API.

The kernels' tests (and any faster kernel that replaces one) go through these names only:
the modules behind them may be cut and renamed without touching the tests.

- the sources of points that Lloyd's rounds pass over (:class:`_lloyd.Source`): points held
  in memory (:class:`PointSource`) and the pixels of a dask array (:class:`PixelSource`);
- how a pixel becomes a point (:class:`FeatureSpace`, with :class:`Filters` for features that
  need its neighbours, kept between passes in a :class:`FeatureCache`), and how integer
  colours become codes (:class:`ColorCodes`);
- the reference kernel, every row against every candidate centre (:func:`accumulate`), and
  the squared distance to the nearest centre (:func:`nearest_sqdist`), on raw rows with a
  ones column (:func:`with_ones`);
- the tiles of a chunk (:class:`TileGrid`);
- the k-means++ seeding (:func:`kmeans_plusplus`), over points it holds along a Z-order curve
  (:func:`z_order_keys`).
"""

from ._codes import ColorCodes
from ._features import FeatureCache, FeatureSpace
from ._filters import Filters
from ._grid import TileGrid
from ._kernels import accumulate, nearest_sqdist, with_ones
from ._lloyd import Source
from ._pixels import PixelSource
from ._plusplus import kmeans_plusplus
from ._points import PointSource, z_order_keys

__all__ = [
    "ColorCodes",
    "FeatureCache",
    "FeatureSpace",
    "Filters",
    "PixelSource",
    "PointSource",
    "Source",
    "TileGrid",
    "accumulate",
    "kmeans_plusplus",
    "nearest_sqdist",
    "with_ones",
    "z_order_keys",
]
