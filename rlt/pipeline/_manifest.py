"""The video manifest: a CSV of ``path,label`` rows, paths relative to the manifest's folder."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ManifestRow:
    """One video: ``video`` as the manifest gives it, ``path`` resolved, and its class index."""

    video: str
    path: Path
    label: int


@dataclass(frozen=True)
class Manifest:
    """The videos of a manifest, in file order, and the class names when labels are names."""

    path: Path
    rows: tuple[ManifestRow, ...]
    classes: tuple[str, ...] | None

    def __len__(self) -> int:
        return len(self.rows)


def read_manifest(path: str | Path) -> Manifest:
    """Reads a ``path,label`` CSV with a header row.

    Labels are integers, or class names that are numbered in sorted order. Relative video paths are
    taken against the manifest's folder.

    Raises:
        FileNotFoundError: no manifest at ``path``.
        ValueError: a missing column or an empty path, naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        if "path" not in fields:
            raise ValueError(f"{path}: the header must name a 'path' column (and 'label'), got {fields}")
        raw = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row.get("path"):
                raise ValueError(f"{path}:{line}: empty video path")
            raw.append((row["path"], row.get("label", ""), line))
    labels = [label for _, label, _ in raw]
    classes: tuple[str, ...] | None = None
    if all(_is_int(label) for label in labels):
        numbers = [int(label) for label in labels]
    else:
        if any(label == "" for label in labels):
            line = next(line for _, label, line in raw if label == "")
            raise ValueError(f"{path}:{line}: empty label")
        classes = tuple(sorted(set(labels)))
        index = {name: k for k, name in enumerate(classes)}
        numbers = [index[label] for label in labels]
    rows = tuple(
        ManifestRow(video=video, path=_resolve(path.parent, video), label=number)
        for (video, _, _), number in zip(raw, numbers, strict=True)
    )
    return Manifest(path=path, rows=rows, classes=classes)


def _resolve(folder: Path, video: str) -> Path:
    candidate = Path(video).expanduser()
    return candidate if candidate.is_absolute() else folder / candidate


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
