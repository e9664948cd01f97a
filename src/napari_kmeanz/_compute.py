"""Running passes: dask's compute with one BLAS thread, arrays assembled from chunks, and
memory for large arrays.

Nothing here knows about pixels or clusters; every pass of the engine goes through
:func:`compute`.
"""

from __future__ import annotations

import functools
import math
import mmap
import sys
from itertools import product

import dask
import dask.array as da
import dask.base
import dask.local
import dask.system
import dask.threaded
import numpy as np
from dask.delayed import Delayed
from threadpoolctl import ThreadpoolController

# Arrays of at least this many bytes get memory of their own (see zeros()): below it, numpy's
# allocator serves them from its pools at no cost.
OWN_MAP_BYTES = 1 << 22


def compute(*collections):
    """``dask.compute`` with BLAS held to one thread in this process.

    The passes run many small matrix products, one per batch of tiles, in several dask threads
    at once; a multi-threaded BLAS inside each of them only oversubscribes the cores (measured:
    a pass over 16.7 M pixels took 1.08 s with it, 0.44 s without, on 2 cores). Worker processes
    of a ``dask.distributed`` cluster already run with one BLAS thread.

    Without a scheduler set in dask's config, dask looks for a ``dask.distributed`` client by
    importing ``distributed`` (0.2 s in a fresh process); no client can exist before that
    package is imported, so the threaded scheduler is then named at once.
    """
    options = {}
    if _no_client_yet():
        if collections and all(isinstance(c, Delayed) for c in collections):
            with one_blas_thread():
                return _on_threads(collections)
        options["scheduler"] = dask.threaded.get
    with one_blas_thread():
        return dask.compute(*collections, **options)


def _on_threads(calls) -> tuple:
    """Delayed ``calls`` on dask's threads, their graphs merged as they are: what
    ``dask.compute`` does with them less its optimisation (for delayed calls, culling: the
    scheduler runs only what the keys need anyway) and its bookkeeping of collections.
    Measured: two calls 0.31 against 1.46 ms, paid by every pass."""
    graph = {}
    for call in calls:
        graph.update(call.__dask_graph__())
    return tuple(dask.threaded.get(graph, [call.key for call in calls]))


def _no_client_yet() -> bool:
    """No scheduler set in dask's config, and ``distributed`` not imported: no client can
    exist, and dask's threads run the tasks (asking dask would import ``distributed``)."""
    return "distributed" not in sys.modules and not dask.config.get("scheduler", None)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library, or none found)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed() -> None:
    """Hand back to the system the memory that the tasks' threads freed. glibc keeps it in
    each thread's arena for that thread alone: after the colour histogram of a 4096x6144
    photo, the main thread's next allocations (the distinct colours) took 88 MiB of new
    pages beside 93 MiB kept and unused, and a run's peak grew by them."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def in_process() -> bool:
    """Whether dask runs tasks in this process now (its threaded or synchronous scheduler,
    not processes or a ``dask.distributed`` cluster): then they can write into one array.
    As in :func:`compute`, no client can exist before ``distributed`` is imported: dask's
    own lookup imports it (0.14 s of a fresh process's first run)."""
    if _no_client_yet():
        return True
    scheduler = dask.base.get_scheduler()
    return scheduler is None or scheduler in (dask.threaded.get, dask.local.get_sync)


def to_numpy(array: da.Array) -> np.ndarray:
    """A dask array computed into one numpy array, each chunk written to its place.

    In this process each chunk is written as soon as it is computed (the chunks computed
    first, then copied, held the array twice: 2 bytes a pixel of a 5-D run's labels at
    k=1000); elsewhere the chunks come back and are copied. The array's memory is a fresh
    map of its own (see :func:`zeros`), not numpy's allocation, which on systems that
    defragment for huge pages on request can stall at the first touch (measured on a
    4096x4096 label image: about 30 ms of a 0.55 s run).
    """
    if in_process():
        out = zeros(array.shape, array.dtype)
        compute(da.store(array, out, lock=False, compute=False))
        return out
    offsets = [offset for _, offset in chunk_grid(array.chunks)]
    return assemble(array.shape, array.dtype, offsets, compute(*array.to_delayed().ravel()))


def assemble(shape, dtype, offsets, parts) -> np.ndarray:
    """One array (memory from :func:`zeros`) holding each part at its offset."""
    out = zeros(shape, dtype)
    for offset, part in zip(offsets, parts, strict=True):
        out[tuple(slice(o, o + n) for o, n in zip(offset, part.shape, strict=True))] = part
    return out


def chunk_grid(chunks: tuple[tuple[int, ...], ...]):
    """``(index, offset)`` of every chunk of a dask array with these ``chunks`` (per axis, the
    chunk sizes), in C order: the chunk's index in the grid and the index of its first pixel."""
    starts = [np.cumsum((0, *c[:-1])) for c in chunks]
    return [
        (idx, tuple(int(s[i]) for s, i in zip(starts, idx, strict=True)))
        for idx in product(*(range(len(c)) for c in chunks))
    ]


def worker_threads() -> int:
    """The threads a pass over points held in this process may share: as many as dask's
    threaded scheduler runs (its ``num_workers``, else a thread per core), one where dask is
    set to run everything in the calling thread."""
    if dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded"):
        return 1
    return int(dask.config.get("num_workers", None) or dask.system.CPU_COUNT)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread():
    """A context in which BLAS runs on one thread in this process (see :func:`compute`).

    The thread pools are looked up once, when first needed: a lookup reads the process's map
    of loaded libraries, which took milliseconds each time, and a run enters this context
    once per pass.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


def zeros(shape, dtype=np.float64) -> np.ndarray:
    """A zero-filled array; a large one in memory of its own.

    Large arrays come from an anonymous map, which the system fills with zeros page by page
    as it is first written. numpy's allocator asks for transparent huge pages for large
    arrays, and on systems set to defragment for them on request (``defrag=madvise``, a common
    default) the first touch can stall: measured here, 0.36 s for 128 MiB against 0.05 s from
    a plain map. Where the system can, the map's pages are made at once (``MAP_POPULATE``):
    the callers write all or most of them.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    size = math.prod(shape) * dtype.itemsize
    if size < OWN_MAP_BYTES:
        return np.zeros(shape, dtype)
    if _POPULATE:  # the pages mapped at once: cheaper than a fault for each page touched
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)
    else:
        memory = mmap.mmap(-1, size)
    return np.frombuffer(memory, dtype=dtype).reshape(shape)
