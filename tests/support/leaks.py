"""What the leak checks count: open fds and memfd mappings of this process."""

from __future__ import annotations

import os


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point at."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used
    return out


def memfd_mappings() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line.rstrip() for line in f if "/memfd:" in line]
