"""The ``napari-kmeanz`` command (also ``python -m napari_kmeanz``): :func:`_cli.main`, then
exit with its code."""

import gc
import sys

from ._cli import main


def run() -> None:
    """Run the command line, then exit with its code.

    Before exiting, every object left is frozen out of the garbage collector (``gc.freeze``):
    the interpreter's shutdown then skips collecting the graph of objects numba builds as it
    loads the kernels, about 0.3 s of a fresh run's 1.8-2.2 s (astronaut, k=16). The run has
    closed its files by then; only the process's end is left.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
