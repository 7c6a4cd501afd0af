"""The video manifest: a CSV of ``path,label`` rows, paths relative to the manifest's folder.

Labels are checked when the manifest is read, so a bad one stops a job at its start with the
line to fix, instead of inside a Ray task or a training step hours later.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_INT64_MAX = 2**63 - 1
# A class index is written in ASCII digits alone: '1.0', '-1', '+3', '1e3', '0x10', '1_000' and
# non-ASCII digits are not indices, although int() or float() would take them.
_INDEX = re.compile(r"[0-9]+")
# ASCII text that float(), int() or int(text, 0) would read as a number: a sign, a point, an
# exponent, 0x/0o/0b, underscores between digits, inf, nan. Such a label is never a class name:
# '-1' or '1.0' among names is a slip in the labels, not a class of its own.
_DIGITS = r"[0-9](?:_?[0-9])*"
_NUMBER = re.compile(
    rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?"
    r"|[+-]?0(?:[xX](?:_?[0-9a-fA-F])+|[oO](?:_?[0-7])+|[bB](?:_?[01])+)"
    r"|[+-]?(?:inf|infinity|nan)",
    re.IGNORECASE,
)
_THROUGHOUT = "use integers >= 0 or class names throughout"

_Kind = Literal["index", "name"]


class ManifestError(ValueError):
    """A manifest that cannot be used; the message starts with its path, and the line at fault.

    Attributes:
        path: the manifest.
        line: the line at fault (1-based, the header is line 1), or None for the whole file.
        reason: what is wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = Path(path), line, reason
        super().__init__(f"{self.path}{'' if line is None else f':{line}'}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, int | None, str]]:
        # Keeps the fields when the error crosses a process boundary (Ray, DataLoader workers).
        return (type(self), (self.path, self.line, self.reason))


@dataclass(frozen=True)
class ManifestRow:
    """One video: ``video`` as the manifest gives it, ``path`` resolved, and its class index."""

    video: str
    path: Path | str  # a str for a video at a URL (s3://...)
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
    """Reads a ``path,label`` CSV with a header row, checking every label.

    The file is UTF-8 (a byte-order mark is allowed), with any line endings; blank lines are
    skipped and whitespace around names and values is ignored. Relative video paths are taken
    against the manifest's folder.

    A manifest's labels are all of one kind:

    - class indices: integers >= 0 written in plain ASCII digits (``0``, ``7``, ``007``), at most
      2**63 - 1; ``classes`` is None;
    - class names: any other non-empty text, numbered 0, 1, ... in sorted order; ``classes``
      holds them.

    A label that reads as a number but is not an index (``-1``, ``1.0``, ``+3``, ``1e3``,
    ``0x10``, ``nan``) is an error, never a class name. The kind of a manifest is that of most of
    its labels (of its first one on a tie); the first row of the other kind is an error.

    Raises:
        FileNotFoundError: no manifest at ``path``.
        ManifestError: a `ValueError` naming the file and the line: the file is not UTF-8 or not
            CSV, the header lacks the ``path`` or ``label`` column, a path or label is empty, a
            label is negative, fractional or too large, or indices and names are mixed.
    """
    from rlt.dataset._remote import fetch_file, is_url

    base: Path | str
    if is_url(path):  # fetched into the cache; its relative paths are taken against its URL
        base = str(path).rsplit("/", 1)[0]
        path = fetch_file(str(path))
    else:
        path = Path(path)
        base = path.parent
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        if path.is_symlink() and not path.exists():
            why = "is a broken symlink or a symlink loop"
        raise FileNotFoundError(f"manifest {path} {why}")
    records = _read_records(path)
    numbers, classes = _number_labels(path, records)
    rows = tuple(
        ManifestRow(video=video, path=_resolve(base, video), label=number)
        for (_, video, _), number in zip(records, numbers, strict=True)
    )
    return Manifest(path=path, rows=rows, classes=classes)


def _read_records(path: Path) -> list[tuple[int, str, str]]:
    """The manifest's ``(line, video, label)`` rows, stripped, blank lines left out."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        # e.object is the data after any byte-order mark; the line count does not depend on it.
        before = e.object[: e.start]
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        raise ManifestError(path, line, f"not UTF-8 text (byte 0x{e.object[e.start]:02x}); save it as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, str, str]] = []
    fields: list[str] | None = None
    last = 0  # the last line of the previous row, so a row's own line is last + 1
    try:
        for row in reader:
            line, last = last + 1, reader.line_num
            values = [value.strip() for value in row]
            if not any(values):
                continue
            if fields is None:
                fields = values
                column, label_column = _columns(path, line, fields)
                continue
            video = values[column] if column < len(values) else ""
            label = values[label_column] if label_column < len(values) else ""
            if not video:
                raise ManifestError(path, line, "empty video path")
            records.append((line, video, label))
    except csv.Error as e:
        raise ManifestError(path, reader.line_num, f"not a valid CSV file ({e})") from None
    if fields is None:
        raise ManifestError(path, None, "the file is empty; it needs a 'path,label' header row")
    return records


def _columns(path: Path, line: int, fields: list[str]) -> tuple[int, int]:
    if "path" not in fields:
        raise ManifestError(path, line, f"the header must name a 'path' column (and 'label'), got {fields}")
    if "label" not in fields:
        raise ManifestError(path, line, f"the header must name a 'label' column (beside 'path'), got {fields}")
    return fields.index("path"), fields.index("label")


def _number_labels(path: Path, records: list[tuple[int, str, str]]) -> tuple[list[int], tuple[str, ...] | None]:
    """The labels as class indices, and the class names when they are names; see `read_manifest`."""
    kinds = [_kind_of(label) for _, _, label in records]
    indices, names = kinds.count("index"), kinds.count("name")
    first = next((k for k in kinds if k is not None), "index")
    kind: _Kind = "index" if indices > names or (indices == names and first == "index") else "name"
    for k, ((line, _, label), label_kind) in enumerate(zip(records, kinds, strict=True)):
        if label_kind != kind or (kind == "index" and _too_large(label)):
            of_kind = indices if kind == "index" else names
            raise ManifestError(path, line, _misfit(label, label_kind, kind, _others(records, k, of_kind)))
    labels = [label for _, _, label in records]
    if kind == "index":
        return [int(label) for label in labels], None
    classes = tuple(sorted(set(labels)))
    number = {name: k for k, name in enumerate(classes)}
    return [number[label] for label in labels], classes


def _kind_of(label: str) -> _Kind | None:
    """``index`` for plain digits, ``name`` for text that is not a number, None otherwise."""
    if _INDEX.fullmatch(label):
        return "index"
    if not label or _NUMBER.fullmatch(label):
        return None
    return "name"


def _too_large(label: str) -> bool:
    # The length test first: int() refuses strings of more than 4300 digits.
    return len(label.lstrip("0")) > len(str(_INT64_MAX)) or int(label) > _INT64_MAX


def _others(records: list[tuple[int, str, str]], k: int, of_kind: int) -> str:
    """The labels that set the manifest's kind, as seen from the ``k``-th row: "" when none do."""
    if k:
        first, last = records[0][0], records[k - 1][0]
        return f"the labels before it ({f'line {first}' if first == last else f'lines {first}-{last}'})"
    return f"the other labels ({of_kind} of {len(records)} rows)" if of_kind else ""


def _misfit(label: str, label_kind: _Kind | None, kind: _Kind, others: str) -> str:
    """Why ``label`` does not fit a manifest of ``kind`` whose ``others`` labels do."""
    shown = _show(label)
    if not label:
        return "empty label"
    if label_kind is None and kind == "index":
        like = f" like {others}" if others else ""
        return f"label {shown} is not an integer >= 0 in plain digits{like}; {_THROUGHOUT}"
    if label_kind is None:
        return (
            f"label {shown} reads as a number, so it is not a class name like {others}, and it is not a class"
            f" index (an integer >= 0 in plain digits); {_THROUGHOUT}"
        )
    if label_kind != kind:
        this, what = ("class index", "class names") if label_kind == "index" else ("class name", "class indices")
        return f"label {shown} is a {this}, but {others} are {what}; {_THROUGHOUT}"
    return f"label {shown} is larger than the largest class index, 2**63 - 1 = {_INT64_MAX}"


def _show(label: str, limit: int = 40) -> str:
    """The label quoted, cut short, so a runaway field does not flood the message."""
    return repr(label if len(label) <= limit else label[:limit] + "...")


def _resolve(folder: Path | str, video: str) -> Path | str:
    from rlt.dataset._remote import is_url

    if is_url(video):
        return video
    if isinstance(folder, str):  # the manifest is at a URL
        return video if video.startswith("/") else f"{folder}/{video}"
    candidate = Path(video).expanduser()
    return candidate if candidate.is_absolute() else folder / candidate
