"""The dataset's metadata files, typed: `DatasetIndex` (``index.json``), `ShardMeta` (a shard's
``meta.json``), the plan's shape, shard names and the clip geometry the format allows.

Every file is read and validated here and nowhere else; an error names the file and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rlt.dataset._files import META, write_json_atomic
from rlt.dataset._remote import is_url, local_path

FORMAT = "rlt-tokens"
# 2: XXH3-128 digests (1: SHA-256); typed, validated metadata.
FORMAT_VERSION = 2
INDEX = "index.json"
PLAN = "plan.json"
SHARDS = "shards"
STORAGES = ("zarr", "arrow")
# Positions and run lengths are stored as int16: a grid side or a clip's tubelets must fit.
INT16_MAX = 2**15 - 1
_SHARD_NAME = re.compile(r"shard-[0-9]{5,}")
_DIGEST = re.compile(r"xxh3_128:[0-9a-f]{32}")


class FormatError(ValueError):
    """A dataset file is not what the format says: ``path``'s ``field`` is missing or wrong."""

    def __init__(self, path: str | Path, field: str, reason: str) -> None:
        self.path, self.field, self.reason = str(path), field, reason
        super().__init__(f"{self.path}: {field}: {reason}" if field else f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return (type(self), (self.path, self.field, self.reason))


def check_shard_name(name: object, path: str | Path, field: str) -> str:
    """``name`` if it is a shard name (``shard-NNNNN``): a single folder below ``shards/``, nothing else."""
    if not (isinstance(name, str) and _SHARD_NAME.fullmatch(name)):
        raise FormatError(path, field, f"{name!r} is not a shard name (shard-NNNNN)")
    return name


def _check_digest(value: str, path: str | Path, field: str) -> str:
    if not _DIGEST.fullmatch(value):
        raise FormatError(path, field, f"{value!r} is not an xxh3_128 digest (xxh3_128: and 32 hex digits)"[:300])
    return value


def _check_file_path(value: str, path: str | Path, field: str) -> str:
    # Readers of object stores fetch the files a meta.json lists: none may lead out of its shard.
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or any(p in ("", ".", "..") for p in parts):
        raise FormatError(path, field, f"{value!r} is not a relative path inside the shard"[:300])
    return value


@dataclass(frozen=True)
class Geometry:
    """The shape of every clip of a dataset.

    Attributes:
        frames: T, frames per clip.
        tubelets: G = T / tubelet_size.
        rows, cols: the patch grid, crop / patch_size each way.
        token_dim: D = tubelet_size * patch_size**2 * 3, values per token.
    """

    frames: int
    tubelets: int
    rows: int
    cols: int
    token_dim: int

    def __post_init__(self) -> None:
        if max(self.tubelets, self.rows, self.cols) > INT16_MAX:
            raise ValueError(
                f"a clip of {self.tubelets} tubelets on a {self.rows}x{self.cols} patch grid does not fit the "
                f"format: positions and run lengths are int16, so tubelets per clip and patches per side must be "
                f"at most {INT16_MAX}"
            )

    @classmethod
    def of(cls, *, num_frames: int, crop: int, tubelet_size: int, patch_size: int) -> Geometry:
        if min(num_frames, crop, tubelet_size, patch_size) < 1 or num_frames % tubelet_size or crop % patch_size:
            raise ValueError(
                f"num_frames={num_frames} and crop={crop} must be positive multiples of tubelet_size={tubelet_size} "
                f"and patch_size={patch_size}"
            )
        side = crop // patch_size
        return cls(num_frames, num_frames // tubelet_size, side, side, tubelet_size * patch_size**2 * 3)

    @classmethod
    def from_config(cls, config: dict[str, Any], path: str | Path = INDEX) -> Geometry:
        """The geometry a job's ``config`` (as ``index.json`` holds it) gives its clips."""
        sampling, rlt = _get(config, "sampling", dict, path, "config."), _get(config, "rlt", dict, path, "config.")
        values = {
            "num_frames": _get(sampling, "num_frames", int, path, "config.sampling."),
            "crop": _get(sampling, "crop", int, path, "config.sampling."),
            "tubelet_size": _get(rlt, "tubelet_size", int, path, "config.rlt."),
            "patch_size": _get(rlt, "patch_size", int, path, "config.rlt."),
        }
        try:
            return cls.of(**values)
        except (ValueError, ZeroDivisionError) as e:
            raise FormatError(path, "config", str(e)) from e


@dataclass(frozen=True)
class FileEntry:
    """A data file of a shard: its path inside the shard folder, size and digest (``xxh3_128:HEX``)."""

    path: str
    bytes: int
    digest: str


@dataclass(frozen=True)
class FailedVideo:
    """A video that gave no clips, and why."""

    video: str
    reason: str


@dataclass(frozen=True)
class ShardEntry:
    """A shard as ``index.json`` lists it."""

    name: str
    rows: int
    tokens: int
    dense_tokens: int
    videos: int
    failed: int
    bytes: int
    checksum: str


@dataclass(frozen=True)
class ShardMeta(ShardEntry):
    """A shard's ``meta.json``: what the index lists of it, and the files that hold it.

    Attributes:
        rows: clips. tokens: kept tokens. dense_tokens: tokens with none dropped.
        videos: the shard's videos, failed ones included. failed: those that gave no clips.
        bytes: the data files' total size. checksum: `rlt.dataset.checksum` over ``files``.
        errors: the failed videos and why. decoder: the decoder chain that read the videos.
        files: each data file (``meta.json`` aside).
    """

    errors: tuple[FailedVideo, ...]
    decoder: str
    files: tuple[FileEntry, ...]

    @property
    def entry(self) -> ShardEntry:
        """What ``index.json`` lists of this shard."""
        return ShardEntry(**{name: getattr(self, name) for name in ShardEntry.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any, path: str | Path) -> ShardMeta:
        counts = {k: _get(values, k, int, path) for k in ("rows", "tokens", "dense_tokens", "videos", "failed")}
        errors = tuple(
            FailedVideo(_get(e, "video", str, path, f"errors[{i}]."), _get(e, "reason", str, path, f"errors[{i}]."))
            for i, e in enumerate(_get(values, "errors", list, path))
        )
        files = tuple(
            FileEntry(
                _check_file_path(_get(f, "path", str, path, f"files[{i}]."), path, f"files[{i}].path"),
                _get(f, "bytes", int, path, f"files[{i}]."),
                _check_digest(_get(f, "digest", str, path, f"files[{i}]."), path, f"files[{i}].digest"),
            )
            for i, f in enumerate(_get(values, "files", list, path))
        )
        meta = cls(
            name=check_shard_name(_get(values, "name", str, path), path, "name"),
            errors=errors,
            decoder=_get(values, "decoder", str, path),
            files=files,
            bytes=_get(values, "bytes", int, path),
            checksum=_check_digest(_get(values, "checksum", str, path), path, "checksum"),
            **counts,
        )
        if meta.failed != len(errors) or meta.failed > meta.videos:
            raise FormatError(
                path, "failed", f"{meta.failed} failed videos, {len(errors)} errors, {meta.videos} videos"
            )
        if meta.bytes != sum(f.bytes for f in files):
            raise FormatError(path, "bytes", f"{meta.bytes} is not the sum of the files' sizes")
        return meta


def read_shard_meta(folder: Path) -> ShardMeta:
    """Reads and validates ``folder/meta.json``."""
    return ShardMeta.from_dict(_read_json(folder / META), folder / META)


def write_shard_meta(folder: Path, meta: ShardMeta) -> None:
    write_json_atomic(folder / META, meta.to_dict())


@dataclass(frozen=True)
class Totals:
    videos: int
    failed: int
    clips: int
    tokens: int
    dense_tokens: int
    bytes: int

    @classmethod
    def of(cls, shards: Any) -> Totals:
        """The sums over ``shards`` (`ShardEntry` or `ShardMeta`: their ``rows`` are the clips)."""
        return cls(
            **{k: sum(getattr(s, "rows" if k == "clips" else k) for s in shards) for k in cls.__dataclass_fields__}
        )


@dataclass(frozen=True)
class DatasetIndex:
    """A finished dataset's ``index.json``: its configuration and its shards, written last.

    Attributes:
        storage: ``"arrow"`` or ``"zarr"``.
        config: the job's configuration (``sampling``, ``rlt``, ``backend``, ``storage``, ``shard_size``).
        classes: the class names, when the manifest named its labels; else None.
        versions: the packages that wrote it.
        decoders: the decoder chains that read the videos.
        totals: sums over the shards.
        shards: the shards in order; rows are numbered across them in this order.
        generation: counts the index's publications: every write of ``index.json`` raises it by
            one (``rlt-prep serve --watch`` publishes one per round). Shards are only appended: the
            shards of an earlier generation are the first ones of every later generation, unless
            a run rewrote them (``--retry-failed`` or ``--overwrite`` in ``rlt-prep tokenize``).
    """

    storage: str
    config: dict[str, Any]
    classes: tuple[str, ...] | None
    versions: dict[str, str]
    decoders: tuple[str, ...]
    totals: Totals
    shards: tuple[ShardEntry, ...]
    generation: int = 1

    @property
    def geometry(self) -> Geometry:
        return Geometry.from_config(self.config)

    @classmethod
    def of(
        cls,
        metas: list[ShardMeta],
        *,
        storage: str,
        config: dict[str, Any],
        classes: list[str] | tuple[str, ...] | None,
        versions: dict[str, str],
        generation: int = 1,
    ) -> DatasetIndex:
        """The index of a dataset made of ``metas``' shards."""
        return cls(
            storage=storage,
            config=config,
            classes=tuple(classes) if classes else None,
            versions=versions,
            decoders=tuple(sorted({m.decoder for m in metas})),
            totals=Totals.of(metas),
            shards=tuple(m.entry for m in metas),
            generation=generation,
        )

    def prefix(self, count: int) -> DatasetIndex:
        """This index cut to its first ``count`` shards (totals summed again): what an earlier
        generation of a dataset that only grows listed."""
        return replace(self, shards=self.shards[:count], totals=Totals.of(self.shards[:count]))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["classes"] = list(self.classes) if self.classes else None
        return {"format": FORMAT, "version": FORMAT_VERSION, **values}

    @classmethod
    def from_dict(cls, values: Any, path: str | Path) -> DatasetIndex:
        if not isinstance(values, dict):
            raise FormatError(path, "", "expected a JSON object")
        if values.get("format") != FORMAT:
            raise FormatError(path, "format", f"{values.get('format')!r} is not {FORMAT!r}")
        if values.get("version") != FORMAT_VERSION:
            raise FormatError(
                path,
                "version",
                f"format version {values.get('version')!r} is not supported (this rlt-prep reads version "
                f"{FORMAT_VERSION}); upgrade rlt-prep or re-run `rlt-prep tokenize`",
            )
        storage = _get(values, "storage", str, path)
        if storage not in STORAGES:
            raise FormatError(path, "storage", f"{storage!r} is not one of {', '.join(STORAGES)}")
        config = _get(values, "config", dict, path)
        Geometry.from_config(config, path)
        classes = values.get("classes")
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise FormatError(path, "classes", "expected null or a list of strings")
        totals = _get(values, "totals", dict, path)
        names = ("name", "rows", "tokens", "dense_tokens", "videos", "failed", "bytes", "checksum")
        shards = []
        for i, s in enumerate(_get(values, "shards", list, path)):
            where = f"shards[{i}]."
            entry = ShardEntry(*(_get(s, k, str if k in ("name", "checksum") else int, path, where) for k in names))
            check_shard_name(entry.name, path, f"{where}name")
            _check_digest(entry.checksum, path, f"{where}checksum")
            shards.append(entry)
        if len({s.name for s in shards}) != len(shards):
            raise FormatError(path, "shards", "a shard is listed twice")
        index = cls(
            storage=storage,
            config=config,
            classes=tuple(classes) if classes else None,
            versions={str(k): str(v) for k, v in _get(values, "versions", dict, path).items()},
            decoders=tuple(str(d) for d in _get(values, "decoders", list, path)),
            totals=Totals(**{k: _get(totals, k, int, path, "totals.") for k in Totals.__dataclass_fields__}),
            shards=tuple(shards),
            # 0: written before generations were counted
            generation=_get(values, "generation", int, path) if "generation" in values else 0,
        )
        summed = Totals.of(shards)
        for name in Totals.__dataclass_fields__:
            found, total = getattr(index.totals, name), getattr(summed, name)
            if found != total:
                raise FormatError(path, f"totals.{name}", f"{found} disagrees with the shards' {total}")
        return index


def read_index(root: str | Path) -> DatasetIndex:
    """Reads and validates ``root/index.json``; raises a clear error for a missing or unknown one.

    ``root`` may be a URL (``s3://bucket/prefix``): the index is read from the store.
    """
    if is_url(root):
        from rlt.dataset._cache import read_remote_index

        return read_remote_index(str(root))
    path = local_path(root) / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {root} is not a finished rlt-prep dataset (a job that did not finish "
            f"writes no index; run `rlt-prep tokenize` again to complete it)"
        )
    return DatasetIndex.from_dict(_read_json(path), path)


def write_index(root: Path, index: DatasetIndex) -> None:
    """Writes ``root/index.json`` atomically: the last file of a job, that makes the dataset finished."""
    write_json_atomic(root / INDEX, index.to_dict())


def read_plan(root: Path) -> dict[str, Any] | None:
    """The job's ``plan.json`` under ``root``, validated (None if there is none yet).

    ``{"config": {...}, "classes": [...] | null, "shards": [{"name": "shard-NNNNN", "videos":
    [[video, resolved path, label, size, mtime_ns], ...]}, ...]}``
    """
    path = root / PLAN
    if not path.is_file():
        return None
    plan = _read_json(path)
    _get(plan, "config", dict, path)
    names: set[str] = set()
    for i, shard in enumerate(_get(plan, "shards", list, path)):
        name = check_shard_name(_get(shard, "name", str, path, f"shards[{i}]."), path, f"shards[{i}].name")
        if name in names:
            raise FormatError(path, f"shards[{i}].name", f"{name} is planned twice")
        names.add(name)
        for j, entry in enumerate(_get(shard, "videos", list, path, f"shards[{i}].")):
            if not (
                isinstance(entry, list)
                and len(entry) in (3, 5)
                and isinstance(entry[0], str)
                and isinstance(entry[1], str)
                and _is_int(entry[2])
                and all(_is_int(v) for v in entry[3:])
            ):
                raise FormatError(path, f"shards[{i}].videos[{j}]", "expected [video, path, label, size, mtime_ns]")
    return plan


def _read_json(path: Path) -> Any:
    return parse_json(path.read_bytes(), path)


def parse_json(data: bytes, path: str | Path) -> Any:
    """A metadata file's JSON, read from a disk or a store; `FormatError` naming ``path`` if it is not."""
    try:
        return json.loads(data.decode())
    except UnicodeDecodeError as e:
        raise FormatError(path, "", f"not UTF-8 text ({e})") from e
    except json.JSONDecodeError as e:
        raise FormatError(path, "", f"not valid JSON ({e})") from e


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _get(values: Any, key: str, kind: type, path: str | Path, where: str = "") -> Any:
    """``values[key]`` checked to be a ``kind`` (an int >= 0 for int)."""
    if not isinstance(values, dict):
        raise FormatError(path, where.rstrip(".") or "(top level)", "expected a JSON object")
    if key not in values:
        raise FormatError(path, f"{where}{key}", "missing")
    value = values[key]
    if kind is int:
        ok = _is_int(value) and value >= 0
        expected = "an integer >= 0"
    else:
        ok = isinstance(value, kind)
        expected = {"str": "a string", "list": "a list", "dict": "an object"}[kind.__name__]
    if not ok:
        raise FormatError(path, f"{where}{key}", f"expected {expected}, got {value!r}"[:300])
    return value
