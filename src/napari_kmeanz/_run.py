"""One k-means run, as four stages: prepare, seed, rounds, finish.

- **prepare** reads the pixels once or twice: the number of pixels to cluster and their value
  range (for the feature space), and either the distinct colours with their counts (the
  colour-only path: ``spatial_weight=0`` and an integer image of few enough possible colours)
  or a uniform sample of pixels. It yields one :class:`Prepared`.
- **seed** draws the initial centres from the sample (``_seeding``).
- **rounds** are Lloyd's rounds over all points (``_lloyd``): the pixels, chunk by chunk, or
  the distinct colours.
- **finish** labels every pixel by the last centres and sums them once more, for the colours
  and the inertia of the result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._codes import ColorCodes, cell_shifts, decoded_rows, distinct_colors
from ._compute import release_freed, to_numpy
from ._features import FeatureCache, FeatureSpace, column_dtype, value_origin
from ._filters import Filters
from ._jit import warm_up
from ._lloyd import Lloyd, Source, TooFewDistinctPoints
from ._params import Image, Params, check_magnitudes, full_scale, label_dtype
from ._pixels import PixelSource
from ._points import PointSource
from ._result import KMeansResult, KMeansState
from ._seeding import SAMPLE_ROUNDS, Plan, Sample, budget, plan, seed


@dataclass(frozen=True, eq=False)
class Scan:
    """How many pixels are clustered, and the per-channel minimum and maximum of their
    values."""

    n_valid: int
    vmin: np.ndarray
    vmax: np.ndarray


@dataclass(frozen=True, eq=False)
class ColorTable:
    """The distinct colours of the colour-only path, and how pixels find theirs: each
    pixel's colour code indexes a table of labels."""

    points: PointSource  # the distinct colours, weighted by their counts
    coder: ColorCodes
    codes: np.ndarray  # the code of each distinct colour, in the order of ``points``


@dataclass(frozen=True, eq=False)
class Prepared:
    """What the prepare stage yields.

    ``pixels`` are the image's pixels as points of ``space``; ``source`` is what the rounds
    pass over: the pixels, or the distinct colours (``table`` set); ``sample`` is what seeding
    draws from, and ``seeding`` how (:class:`_seeding.Plan`).
    """

    space: FeatureSpace
    pixels: PixelSource
    source: Source
    sample: Sample
    table: ColorTable | None
    seeding: Plan


class Run:
    """One k-means run over a checked image with checked parameters (see :meth:`states`)."""

    def __init__(self, image: Image, params: Params):
        self.image = image
        self.params = params
        self.rng = np.random.default_rng(params.random_state)
        self.prepared: Prepared | None = None
        self.cache: FeatureCache | None = None

    def states(self) -> Iterator[KMeansState]:
        """The run, stage by stage: a state after every round, then the final one. With
        filters, their columns are kept in a :class:`_features.FeatureCache` until the run
        ends, however it ends."""
        warm_up()  # the compiled kernels, loaded while the run reads and seeds
        filters = self.params.filters
        if filters is not None:
            n_columns = filters.n_columns(self.image.n_channels)
            itemsize = column_dtype(self.image.dtype).itemsize
            self.cache = FeatureCache.open(
                math.prod(self.image.spatial_shape), n_columns, itemsize
            )
        try:
            yield from self._stages()
        finally:
            if self.cache is not None:
                self.cache.close()

    def _stages(self) -> Iterator[KMeansState]:
        p = self.params
        prepared = self.prepared = self.prepare()
        factor = prepared.space.factor
        centers = seed(prepared.sample, p.n_clusters, p.init, self.rng, factor, prepared.seeding)
        lloyd = Lloyd(prepared.source, centers, factor, p.max_iter, p.tol, check_distinct=True)
        for _ in lloyd.rounds():
            ordered = lloyd.centers[cluster_order(lloyd.centers, prepared.space.n_values)]
            values = prepared.space.image_values(ordered[:, prepared.space.n_spatial :].copy())
            yield self._state(lloyd, ordered, values)
        result = self.finish(lloyd)
        yield self._state(lloyd, result.centers, result.colors, result)

    def _state(self, lloyd: Lloyd, centers, colors, result=None) -> KMeansState:
        return KMeansState(
            lloyd.n_iter if result is None else result.n_iter,
            self.params.max_iter,
            tuple(lloyd.inertia_history),
            centers,
            colors,
            done=result is not None,
            result=result,
            _labeler=self.labels,
        )

    # -- prepare ------------------------------------------------------------------------------

    def prepare(self) -> Prepared:
        scan, colors, sampled = self._read()
        space = self._space(scan.vmin, scan.vmax)
        image = self.image
        pixels = PixelSource(image.data, image.mask, image.layout.alpha, space, cache=self.cache)
        if colors is not None:
            table = self._table(space, colors)
            sample = self._weighted_sample(table.points.raw, table.points.weights)
            seeding = self._plan(len(sample.rows), 1, len(table.points.raw))
            return Prepared(space, pixels, table.points, sample, table, seeding)
        sample = self._sample(pixels, scan.n_valid, sampled)
        # Refining the seed on the sample pays where a round over all points costs many
        # rounds over the sample: not for the distinct colours (a round over them costs
        # little), and for a small image only as many sample rounds as about two rounds
        # over its pixels.
        per_pass = scan.n_valid / max(len(sample.rows), 1)
        refine_rounds = int(min(SAMPLE_ROUNDS, max(1, 2 * per_pass)))
        seeding = self._plan(len(sample.rows), refine_rounds, scan.n_valid)
        return Prepared(space, pixels, pixels, sample, None, seeding)

    def _plan(self, n_sample: int, refine_rounds: int, n_points: int) -> Plan:
        """The seeding's plan, bounded by the rounds over ``n_points`` points."""
        p = self.params
        bound = budget(p.max_iter, n_points, p.n_clusters)
        return plan(n_sample, p.n_clusters, p.init, p.n_init, refine_rounds, bound)

    def _read(self):
        """The first passes over the pixels: ``(scan, colors, sampled)``.

        On the colour-only path, the colour histogram (at once when the dtype's whole range
        fits it, else after a scan for the value range) and no sample; otherwise the scan
        and, read along with it, the sample.
        """
        image = self.image
        filters = self.params.filters
        alpha = image.layout.alpha
        pixels = PixelSource(image.data, image.mask, alpha, filters=filters, cache=self.cache)
        if self.params.spatial_weight == 0 and image.dtype.kind in "iu" and filters is None:
            info = np.iinfo(image.dtype)
            n = image.n_channels
            colors = self._histogram(pixels, [info.min] * n, [info.max] * n)
            if colors is not None:
                self._check_count(int(colors[1].sum()))
                values = colors[0][:, :-1]  # the distinct colours
                scan = Scan(int(colors[1].sum()), values.min(axis=0), values.max(axis=0))
                return scan, colors, None
            scan = Scan(*pixels.scan())
            self._check_count(scan.n_valid)
            return scan, self._histogram(pixels, scan.vmin, scan.vmax), None
        flat = self._sample_indices(math.prod(image.spatial_shape))
        (n_valid, vmin, vmax), sampled = pixels.scan_and_sample(flat)
        self._check_count(n_valid)
        return Scan(n_valid, vmin, vmax), None, sampled

    def _histogram(self, pixels: PixelSource, vmin, vmax):
        """The distinct colours between ``vmin`` and ``vmax`` (see
        :func:`_codes.distinct_colors`) and their coder, or None for too many possible
        colours."""
        coder = ColorCodes.for_range(vmin, vmax)
        if coder is None:
            return None
        return (*distinct_colors(pixels.histogram(coder), coder, self.image.n_channels), coder)

    def _check_count(self, n_valid: int) -> None:
        if n_valid == 0:
            raise ValueError(
                "No pixel to cluster: every pixel is masked out, fully transparent or NaN."
            )
        if self.params.n_clusters > n_valid:
            raise ValueError(
                f"n_clusters={self.params.n_clusters} is larger than the number of pixels to "
                f"cluster ({n_valid})."
            )

    def _space(self, vmin, vmax) -> FeatureSpace:
        return feature_space(self.params, self.image, vmin, vmax)

    def _table(self, space: FeatureSpace, colors) -> ColorTable:
        """The distinct colours as weighted points of ``space``, in nested cells."""
        rows, counts, codes, keys, coder = colors
        if len(rows) < self.params.n_clusters:
            raise TooFewDistinctPoints(len(rows), self.params.n_clusters)
        shifts = cell_shifts(self.image.n_channels)
        return ColorTable(self._color_points(rows, counts, keys, shifts, space), coder, codes)

    def _color_points(self, rows, counts=None, keys=None, shifts=(), space=None):
        """Colours as weighted points of the feature space, from their raw rows (ones column
        last, as :func:`_codes.decoded_rows` makes them)."""
        values = rows[:, :-1]
        features = (space or self.prepared.space).values(values)
        as_rows = rows if features is values else None  # RGB: the features are the values
        return PointSource(features, counts, keys, shifts, as_rows)

    def _sample_indices(self, n_valid: int) -> np.ndarray:
        """Sorted flat indices of a uniform sample of pixels, about ``sample_size`` of them
        clustered when ``n_valid`` pixels are."""
        n_pixels = math.prod(self.image.spatial_shape)
        wanted = min(n_pixels, math.ceil(self.params.sample_size * n_pixels / n_valid))
        if wanted == n_pixels:
            return np.arange(n_pixels)
        return np.sort(self.rng.choice(n_pixels, size=wanted, replace=False))

    def _sample(self, pixels: PixelSource, n_valid: int, sampled=None) -> Sample:
        """A uniform random sample of clustered pixels, as raw rows of ``pixels.space``.

        ``sampled`` is a sample drawn as if every pixel were clustered (read along with the
        scan); when masked-out pixels leave it short, a larger one is drawn.
        """
        n_pixels = math.prod(self.image.spatial_shape)
        enough = min(n_valid, self.params.sample_size)
        if sampled is None or (len(sampled) < 0.9 * enough and n_valid < n_pixels):
            rows = pixels.sample(self._sample_indices(n_valid))
        else:
            rows = sampled
        exhaustive = len(rows) == n_valid
        space = pixels.space
        if space.n_spatial == 0:
            rows = rows[:, len(self.image.spatial_shape) :]
        rows[:, space.n_spatial :] = space.values(rows[:, space.n_spatial :])
        return Sample(rows, np.ones(len(rows)), exhaustive)

    def _weighted_sample(self, values, counts) -> Sample:
        """A sample of ``sample_size`` draws of the distinct colours, by their counts (all of
        them when they are fewer)."""
        if len(values) <= self.params.sample_size:
            return Sample(values.astype(np.float64), counts, True)
        # rng.choice(len(values), size, p=counts / counts.sum()), the same draws, with the
        # uniform numbers sorted first so that the search runs through the table in order
        # (measured on 1.1 M colours: 11 ms against 26 ms)
        cdf = np.cumsum(counts / counts.sum())
        cdf /= cdf[-1]
        uniform = self.rng.random(self.params.sample_size)
        uniform.sort()
        picks, weights = np.unique(cdf.searchsorted(uniform, side="right"), return_counts=True)
        return Sample(values[picks].astype(np.float64), weights.astype(np.float64), False)

    # -- finish -------------------------------------------------------------------------------

    def labels(self, centers: np.ndarray):
        """Labels of every pixel by ``centers``: through the colour table on the colour-only
        path (4096x4096 photo, k=8: 0.17 s against 0.65 s for a pass over the pixels)."""
        prepared = self.prepared
        if prepared.table is not None:
            return self._table_labels(centers)[0]
        labels = prepared.pixels.labels(centers, label_dtype(len(centers)))
        return labels if self.image.lazy else to_numpy(labels)

    def _table_labels(self, centers, last=False):
        """Labels through the table of distinct colours, with the colours' counts and sums.

        The ``last`` labelling of a run lets go of the distinct colours once each has its
        label, before the pixels' labels are made: their rows, counts and cells (58 MiB for
        the 1.3 M colours of a 4096x6144 photo, 2.4 bytes a pixel beside the labels' one).
        A state's labels after that decode the colours from their codes again (counts and
        sums are then None).
        """
        prepared = self.prepared
        table = prepared.table
        points, counts, sums = table.points, None, None
        if points.dropped:
            rows = decoded_rows(table.codes, table.coder, self.image.n_channels)
            points = self._color_points(rows)
            nearest = points.nearest_and_stats(centers, prepared.space.factor)[0]
        else:
            nearest, counts, sums = points.nearest_and_stats(centers, prepared.space.factor)
        ids = (nearest + 1).astype(label_dtype(len(centers)))
        del nearest
        if last:
            table.points.drop()
            release_freed()
        if self.image.lazy:
            labels = prepared.pixels.lookup_labels(table.codes, ids, table.coder)
        else:
            labels = prepared.pixels.lookup_labels_numpy(table.codes, ids, table.coder)
        return labels, counts, sums

    def finish(self, lloyd: Lloyd) -> KMeansResult:
        prepared = self.prepared
        space = prepared.space
        centers = lloyd.centers[cluster_order(lloyd.centers, space.n_values)]
        if prepared.table is not None:  # distinct colours: sums from them, labels by table
            labels, counts, sums = self._table_labels(centers, last=True)
        elif self.image.lazy:  # final sums now, labels lazily
            counts, sums = prepared.pixels.stats(centers, space.factor)
            labels = self.labels(centers)
        else:  # labels and final sums in one pass
            dtype = label_dtype(self.params.n_clusters)
            labels, counts, sums = prepared.pixels.labels_and_stats(centers, dtype)
        if not (counts > 0).all():
            warnings.warn(
                f"Found {int((counts > 0).sum())} distinct clusters, fewer than n_clusters="
                f"{self.params.n_clusters}: the pixels hold fewer distinct points. Empty "
                "clusters keep their ids but label no pixel.",
                stacklevel=4,
            )
        return result_of(lloyd, centers, (counts, sums), space, self.image, labels)


def result_of(lloyd: Lloyd, centers, stats, space: FeatureSpace, image: Image, labels):
    """The result of a run from its last centres (ordered) and their final ``stats``
    (counts and raw sums): a cluster's colour is the mean of its points' values (the value
    part of its centre when it has none)."""
    counts, sums = stats
    colors = centers[:, space.n_spatial :].copy()
    full = counts > 0
    colors[full] = sums[full, space.n_spatial :] / counts[full, None]
    return KMeansResult(
        labels=labels,
        colors=space.image_values(colors),
        centers=centers,
        counts=counts.astype(np.int64),
        inertia=lloyd.inertia(centers, counts, sums),
        inertia_history=np.asarray(lloyd.inertia_history),
        n_iter=lloyd.n_iter,
        converged=lloyd.converged,
        feature_space=space,
        dtype=image.dtype,
        layout=image.layout,
    )


def cluster_order(centers: np.ndarray, n_channels: int) -> np.ndarray:
    """Deterministic cluster order: by the mean of the centre's value features, then by the
    centre. For grey and RGB that is the mean channel value (darkest first); for
    ``color_space='lab'``, the mean of L*, a* and b*."""
    values = centers[:, centers.shape[1] - n_channels :]
    return np.lexsort((*centers.T[::-1], values.mean(axis=1)))


def feature_space(params: Params, image: Image, vmin, vmax, shapes=None) -> FeatureSpace:
    """The feature space of a run for values between ``vmin`` and ``vmax`` (per value
    feature): position scaled so that crossing the longest extent (of ``image``, or of all
    the spatial ``shapes`` when several images are fitted together) costs ``spatial_weight``
    times the value range."""
    p, filters = params, params.filters
    check_magnitudes(vmin, vmax, p.spatial_weight)
    n = image.n_channels
    colour = slice(None) if filters is None else slice(0, n)  # what colours are made of
    scale = 0.0
    if p.spatial_weight > 0:
        value_range = float(np.max(vmax[colour])) - float(np.min(vmin[colour])) or 1.0
        if p.color_space == "lab":
            value_range = 100.0  # the range of L*
        extent = max(
            size * s
            for shape in (shapes or [image.spatial_shape])
            for size, s in zip(shape, p.spacing, strict=True)
        )
        scale = p.spatial_weight * value_range / extent if extent > 0 else 0.0
    top = full_scale(image.dtype)
    if filters is not None:
        weights = kind_weights(filters, n, vmin, vmax)
        moving = filters.shifted(n)  # far from zero (int32 near 2**31, say): shifted too
        origin = value_origin(np.asarray(vmin)[moving], np.asarray(vmax)[moving])
        return FeatureSpace(p.spacing, scale, n, "rgb", top, origin, filters, weights)
    origin = value_origin(vmin, vmax) if p.color_space == "rgb" else 0.0
    return FeatureSpace(p.spacing, scale, n, p.color_space, top, origin)


def kind_weights(filters: Filters, n_channels: int, vmin, vmax) -> tuple[float, ...]:
    """The weight of each value feature: 1 for the colour kind's (0 when it is there for the
    colours alone); for every other kind, the values' range over the kind's range (over its
    columns), so that each kind spans what the values span."""
    vmin, vmax = np.asarray(vmin, np.float64), np.asarray(vmax, np.float64)
    weights = np.ones(len(vmin))
    kinds = list(filters.kind_columns(n_channels))
    _, colour = kinds[0]
    value_range = float(vmax[colour].max() - vmin[colour].min())
    if filters.colour_only:
        weights[colour] = 0.0
    for _, columns in kinds[1:]:
        spread = float(vmax[columns].max() - vmin[columns].min())
        if spread > 0 and value_range > 0:
            weights[columns] = value_range / spread
    return tuple(float(w) for w in weights)
