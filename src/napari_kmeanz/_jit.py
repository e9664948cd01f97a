"""The compiled kernels: each written once, in Python, and compiled by numba.

A kernel is a plain function of arrays, registered with :func:`kernel` and the signatures its
callers pass (a caller passing other types is refused, not compiled again), or with none: a
kernel that reads the image itself is compiled for each dtype it meets, once. It runs
without the interpreter's lock, so dask's threads run it side by side, and its machine code
is cached on disk: compiled the first time (a few seconds), loaded after (some 0.3 s, mostly
numba's own imports). numba is imported only when a kernel is first needed, or by
:func:`warm_up`, which loads them all on a thread of its own at the start of a run.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable

_LOCK = threading.Lock()
_REGISTERED: dict[str, tuple[Callable, tuple[str, ...]]] = {}  # name: (function, signatures)
_LOADED: dict[str, Callable] = {}
_HELPERS: list[Callable] = []  # functions the kernels call, compiled with them


def helper(function: Callable) -> Callable:
    """Register the decorated function as one that kernels of its module call: when they are
    compiled, the module's name for it is bound to its compiled version (numba compiles the
    callers with it). From Python it is called as it is until then."""
    _HELPERS.append(function)
    return function


def kernel(*signatures: str):
    """Register the decorated function as a kernel with ``signatures`` (numba's notation, the
    argument types only: ``"(float64[:, ::1], intp[::1])"``); the name it is bound to calls the
    compiled kernel. With no signatures, it is compiled for the types of each call that
    brings new ones (loaded from numba's cache after the first time)."""

    def register(function: Callable) -> Callable:
        name = f"{function.__module__}.{function.__qualname__}"
        _REGISTERED[name] = (function, signatures)

        @functools.wraps(function)
        def call(*args):
            compiled = _LOADED.get(name)
            return (compiled or _load(name))(*args)

        call.python_function = function
        return call

    return register


def _load(name: str) -> Callable:
    with _LOCK:
        if name not in _LOADED:
            _LOADED[name] = _compiled(*_REGISTERED[name])
    return _LOADED[name]


def _jitted(function: Callable):
    import numba

    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)  # compiled in each process instead


def _compiled(function: Callable, signatures: tuple[str, ...]) -> Callable:
    for used in _HELPERS:
        names = function.__globals__
        if used.__module__ == function.__module__ and names[used.__name__] is used:
            names[used.__name__] = _jitted(used)
    compiled = _jitted(function)
    for signature in signatures:
        compiled.compile(signature)
    if signatures:
        compiled.disable_compile()
    return compiled


def warm_up() -> None:
    """Load every kernel not loaded yet on a thread of its own, so that a run's first pass
    finds them ready: the loading overlaps the run's reading, histogram and seeding. A
    failure is left for the first pass to raise."""
    if not (_REGISTERED and len(_LOADED) == len(_REGISTERED)) and not _LOCK.locked():
        threading.Thread(target=_load_all, name="napari-kmeanz-kernels").start()


def _load_all() -> None:
    from . import _kernels, _plusplus, _prune, _rows, _tiles  # noqa: F401 - the modules whose kernels register

    for name in list(_REGISTERED):
        with contextlib.suppress(Exception):  # raised again, where it is needed
            _load(name)
