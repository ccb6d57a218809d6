"""What every benchmark JSON says about the machine it ran on (figures are only comparable on
the same one)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_machine() -> dict:
    """The CPU and how many cores this process may use."""
    cores = len(os.sched_getaffinity(0))
    return {"cpu": cpu_name(), "cores": cores, "platform": platform.platform()}
