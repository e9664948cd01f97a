"""The fitting entry points: :func:`kmeans` and :func:`iter_kmeans`.

Both check every argument before any pass over the pixels (``_params``) and hand the run to
``_run``, whose stages read as prepare, seed, rounds and finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np

from . import _watch
from ._many import fit_pooled, is_several
from ._params import Params, check_image, fit_overlap
from ._result import KMeansResult, KMeansState, predict
from ._run import Run
from ._watch import Cancelled


def _several(arguments: dict) -> KMeansResult:
    """:func:`kmeans` of several images: a model on their pooled sample, and the labels of
    each image by it (lazy for a dask image)."""
    images = list(arguments.pop("image"))
    for name in ("cancel", "progress"):
        if arguments.pop(name) is not None:
            raise TypeError(f"{name} is not taken with several images yet.")
    model = fit_pooled(images, arguments)
    return replace(model, labels=[predict(image, model) for image in images])


__all__ = ["Cancelled", "KMeansResult", "KMeansState", "iter_kmeans", "kmeans"]


def kmeans(
    image,
    n_clusters: int = 8,
    *,
    spatial_weight: float = 0.0,
    channel_axis: int | str | None = "auto",
    alpha: bool | None = None,
    spacing: Sequence[float] | None = None,
    mask=None,
    color_space: str = "rgb",
    sigma: float | Sequence[float] | None = None,
    features: Sequence[str] | None = None,
    init: str | np.ndarray = "k-means++",
    max_iter: int = 100,
    tol: float = 1e-4,
    random_state: int | np.random.Generator | None = None,
    sample_size: int = 65536,
    n_init: int = 4,
    callback: Callable[[KMeansState], None] | None = None,
    cancel=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> KMeansResult:
    """Cluster the pixels of an image by k-means in a joint space of position and value.

    Each pixel is a point ``(position * spatial_scale, values)``: its coordinates along the
    spatial axes (times ``spacing``), scaled so that ``spatial_weight`` sets how much position
    counts against value, followed by its channel values in the image's own units.

    Parameters
    ----------
    image : array_like or dask.array.Array
        Integer or float image: 2-D grey, 2-D RGB/RGBA (channels last), a multichannel image
        with an explicit ``channel_axis``, a 3-D volume, ... . A dask (or zarr) array is read
        chunk by chunk: memory stays bounded by the chunk size. A list or tuple of arrays is
        several images (of any shapes, the same channels and value scale), fitted together
        by one model on a pooled sample of ``sample_size`` pixels from all of them (about the
        same number from each: memory does not grow with their number); the result's
        ``labels`` is then a list, one per image, with the same ids and colours in all, and
        its counts, inertia and rounds are those of the pooled sample. (For the frames of
        one stack, pass the stack with ``spacing=(0, ...)`` instead.)
    n_clusters : int, default=8
        Number of clusters k.
    spatial_weight : float, default=0.0
        How much position counts against value. 0 clusters on values alone. Otherwise the
        position features are scaled so that crossing the image's longest physical extent
        (``max(shape_i * spacing_i)``) costs ``spatial_weight`` times the value range (maximum
        minus minimum over all clustered pixels and channels). ``spatial_weight=1`` puts position
        on the same footing as colour: for a square 8-bit image, position runs over 0..255 like
        each colour channel (the original 5-D script's setting). Distances stay isotropic, so a
        non-square image keeps its aspect.
    channel_axis : int, None or 'auto', default='auto'
        Axis holding the channels. ``'auto'``: the last axis when the image has 3 or more
        dimensions and 3 or 4 entries along it (RGB, RGBA), otherwise none. ``None``: no channel
        axis (grey image or volume).
    alpha : bool, optional
        Whether the last channel is alpha. Defaults to True for an auto-detected 4-channel
        image. Alpha is not a feature; fully transparent pixels (alpha 0) are not clustered.
        For a 4-channel image of integers wider than 8 bits (rarely RGBA; often 4
        fluorescence channels), that default comes with a warning: pass ``alpha=False`` to
        cluster the 4 channels.
    spacing : sequence of float, optional
        Physical pixel size along each spatial axis (anisotropic voxels); default 1. A spacing
        of 0 leaves that axis out of the position features: the frames of a time series (or
        the planes of a stack) are then clustered together with shared centres, by their
        in-plane position and values.
    mask : array_like, optional
        Spatial shape of the image; only pixels where it is non-zero (and not NaN) are
        clustered. The mask of a numpy masked array (a pixel with any channel masked) is
        applied as well.
    color_space : {'rgb', 'lab'}, default='rgb'
        'rgb' clusters the values as they are. 'lab' (RGB images only) clusters them as CIE
        L*a*b* (D65), a perceptual space where equal distances look about equally different;
        the value range for ``spatial_weight`` is then 100 (the range of L*), and ``colors``
        are still given in the image's own RGB units.
    sigma : float or sequence of float, optional
        Gaussian scale of the value features, in the units of ``spacing`` (pixels by
        default): a number, or one per spatial axis. A z step of 4 with ``sigma=2`` smooths
        over half a plane along z; an axis of spacing 0 (or of sigma 0) is neither smoothed
        nor differentiated: along it, every plane (a time frame, say) gets features of its
        own. With ``features`` left out, the values are smoothed at this scale before
        clustering (noisy images).
    features : sequence of str, optional
        The value features of every pixel, for every channel, at the scale ``sigma``:
        ``'value'`` (the value as it is; the default without ``sigma``), ``'gaussian'``
        (smoothed; the default with it), ``'gradient'`` (magnitude of the Gaussian
        gradient: edges), ``'laplace'`` (Laplacian of Gaussian: blobs), ``'std'`` (local
        standard deviation: texture) and ``'hessian'`` (eigenvalues of the Hessian of
        Gaussian, one per spatial axis of sigma > 0, largest first: tubes, sheets).
        ``'value'`` or ``'gaussian'`` weighs in the image's units; every other kind is scaled
        so that its range over the image equals the values' range, so that each kind weighs
        as much as the values do. The colours are the means of the first of ``'value'`` and
        ``'gaussian'`` asked for (of the values, when neither is). Each chunk is read with
        the overlap its filters need (4 sigmas and 2 pixels), so the result does not depend
        on the chunking; beyond the image's edges the nearest pixel is repeated. A NaN or
        infinite value is missing: its pixel is left out (label 0), and the pixels around it
        take their features from their finite neighbours alone (normalised convolution).
    init : {'k-means++', 'random'} or ndarray of shape (k, n_features), default='k-means++'
        ``'k-means++'``: k-means++ seeding, ``'random'``: k distinct random points; both drawn
        from a random sample of ``sample_size`` pixels (so their cost does not grow with the
        image) and refined by Lloyd rounds on that sample before the rounds over all pixels. An
        array gives the initial centres in feature space, used as they are.
    max_iter : int, default=100
        Maximum number of rounds over all pixels.
    tol : float, default=1e-4
        Relative tolerance on the inertia: the run stops when a round lowers the inertia by
        less than ``tol`` times the previous round's inertia. It also stops when the centres no
        longer move. ``tol=0`` runs until the assignment is stable or ``max_iter`` is reached.
    random_state : int or numpy.random.Generator, optional
        Seed of the sampling and seeding. The same seed gives the same result whatever the
        chunking of the image.
    sample_size : int, default=65536
        Number of clustered pixels sampled for the initialisation.
    n_init : int, default=4
        Number of seedings tried on the sample; the one with the lowest inertia on the sample
        starts the rounds over all pixels. Ignored when ``init`` is an array. The seedings,
        and the refinement of the best on the sample, each cost at most a small share of the
        rounds over all pixels (a seeding runs on fewer points where it would cost more), so
        a run of a few rounds with many clusters does not wait on its seeding.
    callback : callable, optional
        Called with a :class:`KMeansState` after every round; raising from it stops the run.
    cancel : threading.Event or any object with ``is_set()``, optional
        Set it (from any thread) to stop the run within a fraction of a second, wherever it
        is (sampling, seeding, a pass over the pixels): the run raises :class:`Cancelled`.
        Under a ``dask.distributed`` client, the run stops at the end of the pass under way.
    progress : callable, optional
        Called as ``progress(stage, done, total)`` while a long stage runs (``'seeding'``:
        the centres chosen and the rounds on the sample run so far), at most every 0.1 s,
        from the thread running the run.

    Returns
    -------
    KMeansResult

    Raises
    ------
    TypeError
        For a bool, complex or non-numeric image, or a parameter of the wrong type.
    ValueError
        For a bad parameter value (named in the message), an empty image, a mask of another
        shape, no pixel left to cluster, values too large or too close together for float64
        squared distances (beyond 1e100, or spanning less than 1e-100), or more clusters than
        pixels or distinct points. Distinct points are counted before the rounds when the
        image has few of them (integer colours, or every clustered pixel in the sample);
        otherwise a round that finds every pixel on a centre and clusters left empty raises.

    Notes
    -----
    Pixels with a NaN or infinite value in any channel are not clustered: they get label 0 like
    masked-out pixels. Cluster ids are ordered by the mean of the centre's value features, ties
    by the centre, so the same image gives the same ids every run: for grey and RGB that is the
    mean channel value (darkest first); with ``color_space='lab'``, the mean of L*, a* and b*.

    With ``spatial_weight=0`` and an integer image of at most 2**24 possible colours, the
    distinct colours are clustered, weighted by their counts (the same objective, exactly), and
    labels are mapped back through a lookup table.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_kmeanz import kmeans
    >>> result = kmeans(data.astronaut(), 4, random_state=0)
    >>> result.labels.shape, result.colors.shape
    ((512, 512), (4, 3))
    >>> int(result.labels.min()), int(result.labels.max())
    (1, 4)
    >>> result.recolor().dtype
    dtype('uint8')
    """
    arguments = dict(locals())  # the parameters, by name (nothing else is bound yet)
    callback = arguments.pop("callback")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {callback!r}.")
    if is_several(image):
        return _several(arguments)
    state = None
    for state in iter_kmeans(**arguments):
        if callback is not None:
            callback(state)
    return state.result


def iter_kmeans(
    image,
    n_clusters: int = 8,
    *,
    spatial_weight: float = 0.0,
    channel_axis: int | str | None = "auto",
    alpha: bool | None = None,
    spacing: Sequence[float] | None = None,
    mask=None,
    color_space: str = "rgb",
    sigma: float | Sequence[float] | None = None,
    features: Sequence[str] | None = None,
    init: str | np.ndarray = "k-means++",
    max_iter: int = 100,
    tol: float = 1e-4,
    random_state: int | np.random.Generator | None = None,
    sample_size: int = 65536,
    n_init: int = 4,
    cancel=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[KMeansState]:
    """Run :func:`kmeans` one round at a time.

    Takes the parameters of :func:`kmeans` (but ``callback``), ``cancel`` and ``progress``
    included, and yields a
    :class:`KMeansState` after every round over all pixels; the last state has ``done=True``
    and carries the :class:`KMeansResult`. Stopping the iteration early stops the work: no
    further pass over the pixels is made. All parameters are checked before the first pass.
    """
    arguments = dict(locals())  # the parameters, by name (nothing else is bound yet)
    watch = _watch.Watch.check_arguments(arguments.pop("cancel"), arguments.pop("progress"))
    if is_several(image):
        raise TypeError("iter_kmeans takes one image; kmeans fits several (a list) at once.")
    image = check_image(
        arguments.pop("image"), arguments.pop("channel_axis"), arguments.pop("alpha"),
        arguments.pop("mask"),
    )  # fmt: skip
    params = Params.check(arguments, image)
    states = Run(fit_overlap(image, params.filters), params).states()
    return states if watch is None else _watch.watched(states, watch)
