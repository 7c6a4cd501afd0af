"""Errors that callers of the pipeline are expected to catch."""

from __future__ import annotations

from pathlib import Path


class VideoDecodeError(RuntimeError):
    """A video could not be decoded; names the file and the reason.

    Attributes:
        path: the file, as given.
        reason: why, in words a user can act on.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Keeps (path, reason) when the error crosses a process boundary (Ray, DataLoader workers).
        return (type(self), (self.path, self.reason))
