"""What the benchmarks share: forgetting a folder's pages, to time a cold read without root."""

from __future__ import annotations

import os
from pathlib import Path


def drop_page_cache(folder: Path) -> None:
    """Asks the kernel to forget a folder's file pages, as for a dataset larger than memory (no root
    needed; pages a process has mapped stay)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
