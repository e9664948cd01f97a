"""Peak memory of a benchmark's fit: shared by the benchmark scripts in this folder."""

import contextlib
import resource
from pathlib import Path


def reset_peak_rss() -> None:
    """Start the kernel's peak-RSS count afresh (Linux), so that it covers only the fit."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """The process's peak RSS since the last reset (Linux VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
