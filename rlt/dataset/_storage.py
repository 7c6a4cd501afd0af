"""The two storages of a shard, Zarr v3 and Arrow IPC: writing rows, and reading them back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlt._checks import check_choice
from rlt.dataset._files import writing
from rlt.dataset._format import STORAGES, FormatError, Geometry
from rlt.dataset._record import ClipRecord

Storage = Literal["zarr", "arrow"]
# Arrow shards keep the pixels apart, so that reading metadata never pages pixels in.
ARROW_FILE = "clips.arrow"
ARROW_TOKENS_FILE = "tokens.arrow"
ZARR_ARRAYS = ("video", "label", "clip", "frame_indices", "padded", "token_offsets", "positions", "lengths", "tokens")
# Tokens per Zarr chunk, and per Zarr shard (the file that holds many chunks).
# Chosen by measurement (FORMAT.md): zstd sees enough of a clip's tubelets in 4096-token chunks to
# store fewer bytes than MosaicML's MDS with zstd over whole shards (2.66x against 2.65x on the sample
# videos' tokens), and a clip's read decompresses one or two 6 MB chunks, never the whole shard.
TOKEN_CHUNK = 4096
TOKEN_SHARD = 16384
ZSTD_LEVEL = 7
# A Zarr shard's tokens up to this many bytes are unpacked in memory, not through a raw file: one
# write of the tokens instead of two (the default shards hold ~76 MB).
UNPACK_IN_MEMORY = 256 << 20


def write_columns(folder: Path, columns: dict[str, np.ndarray], *, storage: Storage, geometry: Geometry) -> None:
    """Writes a shard's columns (as `ShardWriter` makes them) into the new, empty ``folder``."""
    if storage == "zarr":
        _write_zarr(folder, columns)
    elif storage == "arrow":
        _write_arrow(folder, columns, geometry)
    else:
        check_choice("storage", storage, STORAGES)


def _write_zarr(folder: Path, columns: dict[str, np.ndarray]) -> None:
    import zarr

    with writing(folder):
        group = zarr.open_group(str(folder), mode="w-", zarr_format=3)
        for name, values in columns.items():
            _write_zarr_array(group, name, values)


def _write_zarr_array(group: Any, name: str, values: np.ndarray) -> None:
    from zarr.codecs import ZstdCodec

    zstd = ZstdCodec(level=ZSTD_LEVEL)
    if name == "video":
        array = group.create_array(name, shape=values.shape, dtype=str, chunks=(max(len(values), 1),))
    elif name == "tokens":
        array = group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(TOKEN_CHUNK, values.shape[1]),
            shards=(TOKEN_SHARD, values.shape[1]),
            compressors=zstd,
        )
    else:
        chunks = (max(values.shape[0], 1), *values.shape[1:])
        array = group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks, compressors=zstd)
    if values.size:
        array[...] = values


_WRITE_BUFFER = 4 << 20


def _write_arrow(folder: Path, columns: dict[str, np.ndarray], geometry: Geometry) -> None:
    import pyarrow as pa

    if columns["token_offsets"][-1] > np.iinfo(np.int32).max:
        raise ValueError(f"{folder}: an Arrow shard holds at most 2**31 - 1 tokens; lower shard_size")
    arrays = arrow_arrays(columns, geometry)
    for name, schema in zip((ARROW_FILE, ARROW_TOKENS_FILE), arrow_schemas(geometry), strict=True):
        table = pa.Table.from_arrays([arrays[field.name] for field in schema], schema=schema)
        # Buffered: the IPC writer issues one write per buffer and padding (about 50 for a shard),
        # where the file needs a few large ones.
        with (
            writing(folder / name),
            pa.OSFile(str(folder / name), "wb") as file,
            pa.BufferedOutputStream(file, _WRITE_BUFFER) as sink,
            pa.ipc.new_file(sink, schema) as writer,
        ):
            writer.write_table(table)


def arrow_arrays(columns: dict[str, np.ndarray], geometry: Geometry) -> dict[str, Any]:
    """The Arrow arrays (FORMAT.md's types) of a shard's numpy columns, as `ShardWriter` makes them:
    ``token_offsets`` and any of the fields, per row ([R, ...]) or per token ([N, ...]). Gives
    ``num_tokens`` too. The offsets are int32: they count a shard's tokens, not its bytes."""
    import pyarrow as pa

    types = {field.name: field.type for schema in arrow_schemas(geometry) for field in schema}
    token_offsets = columns["token_offsets"]
    offsets = pa.array(token_offsets.astype(np.int32))
    rows = len(token_offsets) - 1
    arrays = {"num_tokens": pa.array(np.diff(token_offsets).astype(np.int32))}
    for name, values in columns.items():
        kind = types.get(name)
        if kind is None:  # token_offsets
            continue
        if name == "video":
            arrays[name] = pa.array(values.tolist(), type=kind)
        elif not pa.types.is_list(kind):
            arrays[name] = pa.array(values, type=kind)
        elif name in ("frame_indices", "padded"):  # [R, width]: one list per row
            starts = pa.array(np.arange(rows + 1, dtype=np.int32) * values.shape[1])
            arrays[name] = pa.ListArray.from_arrays(starts, pa.array(values.reshape(-1), type=kind.value_type))
        else:  # per token, [N] or [N, width]: one list of N per row
            item = kind.value_type
            if pa.types.is_fixed_size_list(item):
                flat = pa.FixedSizeListArray.from_arrays(
                    pa.array(values.reshape(-1), type=item.value_type), item.list_size
                )
            else:
                flat = pa.array(values, type=item)
            arrays[name] = pa.ListArray.from_arrays(offsets, flat)
    return arrays


def expected_files(storage: Storage) -> set[str]:
    """Files every shard of this storage has, whatever its rows (a writer checks them before commit)."""
    if storage == "arrow":
        return {ARROW_FILE, ARROW_TOKENS_FILE}
    return {"zarr.json"} | {f"{array}/zarr.json" for array in ZARR_ARRAYS}


def arrow_schemas(geometry: Geometry) -> tuple[Any, Any]:
    """The schemas of ``clips.arrow`` and ``tokens.arrow`` (FORMAT.md), exactly as written and read."""
    import pyarrow as pa

    clips = pa.schema(
        [
            ("video", pa.string()),
            ("label", pa.int64()),
            ("clip", pa.int32()),
            ("frame_indices", pa.list_(pa.int32())),
            ("padded", pa.list_(pa.bool_())),
            ("num_tokens", pa.int32()),
            ("positions", pa.list_(pa.list_(pa.int16(), 3))),
            ("lengths", pa.list_(pa.int16())),
        ]
    )
    tokens = pa.schema([("tokens", pa.list_(pa.list_(pa.uint8(), geometry.token_dim)))])
    return clips, tokens


class ShardReader:
    """Reads rows of one committed shard, only the fields asked for.

    Opening a shard checks its structure against the format and ``geometry``: the arrays and their
    dtypes and shapes, row and token counts, offsets, and that every position lies on the clip's grid
    and every run inside the clip. A shard that fails raises `FormatError` naming the file and field.

    Args:
        scan: scan the per-token values (positions, run lengths, labels); off for a shard whose
            unchanged files passed every check before.
        preload: for Zarr, decompress the per-token arrays (tokens, positions, lengths) whole on
            first use and serve rows from memory; without it a read decompresses only the chunks
            holding its rows. Arrow is memory-mapped and needs no preloading.
    """

    def __init__(
        self, folder: Path, storage: Storage, geometry: Geometry, *, preload: bool = False, scan: bool = True
    ) -> None:
        self.folder, self.storage, self.geometry, self.preload = folder, storage, geometry, preload
        self._cache: dict[str, np.ndarray] = {}
        if storage == "zarr":
            self._open_zarr()
        else:
            self._open_arrow()
        if scan:
            self._check_tokens()

    def _open_zarr(self) -> None:
        import zarr

        g = self.geometry
        self._group: Any = zarr.open_group(str(self.folder), mode="r")
        self._arrays: dict[str, Any] = {}
        offsets = np.asarray(self._array("token_offsets", np.int64, (None,))[:])
        self.rows = len(offsets) - 1
        self._offsets = offsets
        if self.rows < 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise FormatError(self.folder / "token_offsets", "values", "offsets must start at 0 and never decrease")
        self.tokens = int(offsets[-1])
        r, n = self.rows, self.tokens
        self._array("video", None, (r,))
        self._array("label", np.int64, (r,))
        self._array("clip", np.int32, (r,))
        self._array("frame_indices", np.int32, (r, g.frames))
        self._array("padded", np.bool_, (r, g.tubelets))
        self._array("positions", np.int16, (n, 3))
        self._array("lengths", np.int16, (n,))

    def _array(self, name: str, dtype: type | None, shape: tuple[int | None, ...]) -> Any:
        try:
            array = self._group[name]
        except KeyError:
            raise FormatError(self.folder / name, "", "the array is missing") from None
        self._arrays[name] = array  # opening one reads its metadata: once per shard
        wrong_shape = len(array.shape) != len(shape) or any(
            w not in (None, a) for a, w in zip(array.shape, shape, strict=True)
        )
        # dtype None: a string array (zarr 3 reads it as NumPy's StringDType, older ones as object)
        wrong_dtype = array.dtype.kind not in "TUO" if dtype is None else array.dtype != dtype
        if wrong_shape or wrong_dtype:
            want = f"{np.dtype(dtype) if dtype else 'string'} {['N' if w is None else w for w in shape]}"
            raise FormatError(self.folder / name, "", f"is {array.dtype} {list(array.shape)}, the format says {want}")
        return array

    def _open_arrow(self) -> None:
        clips_schema, _ = arrow_schemas(self.geometry)
        self._table = _open_arrow(self.folder / ARROW_FILE, clips_schema)
        self._tokens_table: Any = None  # opened and checked on the first read of pixels
        self.rows = self._table.num_rows
        lengths = self._table.column("lengths").chunk(0)
        self._offsets = lengths.offsets.to_numpy().astype(np.int64)
        self.tokens = int(self._offsets[-1])
        g = self.geometry

        def fail(name: str, reason: str) -> FormatError:
            return FormatError(self.folder / ARROW_FILE, name, reason)

        if self._offsets[0] != 0:
            raise fail("lengths", "list offsets must start at 0")
        if not np.array_equal(self._table.column("positions").chunk(0).offsets.to_numpy(), self._offsets):
            raise fail("positions", "its rows do not hold the same tokens as lengths")
        for name in ("lengths", "positions"):
            # The IPC reader does not check that list offsets stay inside the values.
            if len(self._table.column(name).chunk(0).values) != self.tokens:
                raise fail(name, f"its offsets end at token {self.tokens}, not at the end of its values")
        if not np.array_equal(self._table.column("num_tokens").chunk(0).to_numpy(), np.diff(self._offsets)):
            raise fail("num_tokens", "disagrees with the rows' tokens")
        for name, width in (("frame_indices", g.frames), ("padded", g.tubelets)):
            column = self._table.column(name).chunk(0)
            expected = np.arange(self.rows + 1) * width
            if not np.array_equal(column.offsets.to_numpy(), expected) or len(column.values) != expected[-1]:
                raise fail(name, f"every row must hold {width} values")

    def unpack(self, folder: Path) -> None:
        """Writes this Zarr shard into ``folder`` in Arrow storage (FORMAT.md's two Arrow files, no
        ``meta.json``): the copy the training loader memory-maps instead of decompressing one or two
        chunks for every clip.

        Tokens up to `UNPACK_IN_MEMORY` bytes are decompressed into memory and written once. Larger
        ones go through a raw file, one Zarr shard file at a time, memory-mapped for the Arrow
        writer, so that memory holds at most one such file."""
        shape = (self.tokens, self.geometry.token_dim)
        pixels = self._pixels()
        raw = folder / ".tokens.u8"
        if self.tokens * self.geometry.token_dim <= UNPACK_IN_MEMORY:
            tokens = np.empty(shape, np.uint8)
            for start in range(0, self.tokens, TOKEN_SHARD):
                tokens[start : start + TOKEN_SHARD] = pixels[start : start + TOKEN_SHARD]
        else:
            with writing(raw), open(raw, "wb") as out:
                for start in range(0, self.tokens, TOKEN_SHARD):
                    out.write(np.ascontiguousarray(pixels[start : start + TOKEN_SHARD]).data)
            tokens = np.memmap(raw, np.uint8, "r", shape=shape)
        columns = {name: self.column(name) for name in ZARR_ARRAYS if name not in ("token_offsets", "tokens")}
        write_columns(
            folder,
            {"token_offsets": self._offsets, **columns, "tokens": tokens},
            storage="arrow",
            geometry=self.geometry,
        )
        del tokens
        raw.unlink(missing_ok=True)

    def _pixels(self) -> Any:
        """The tokens (pixels), opened and checked on first use: reports that read metadata never
        touch them."""
        if self.storage == "zarr":
            if "tokens" not in self._arrays:
                self._array("tokens", np.uint8, (self.tokens, self.geometry.token_dim))
            return self._arrays["tokens"]
        if self._tokens_table is None:
            path = self.folder / ARROW_TOKENS_FILE
            table = _open_arrow(path, arrow_schemas(self.geometry)[1])
            if table.num_rows != self.rows:
                raise FormatError(path, "tokens", f"{table.num_rows} rows, not {self.rows}")
            tokens = table.column("tokens").chunk(0)
            if not np.array_equal(tokens.offsets.to_numpy(), self._offsets) or len(tokens.values) != self.tokens:
                raise FormatError(path, "tokens", "its rows do not hold the same tokens as lengths")
            self._tokens_table = table
        return self._tokens_table

    def _check_tokens(self) -> None:
        """Every token on the grid, every run inside its clip, every label >= 0."""
        g = self.geometry
        positions = self.column("positions").astype(np.int64)
        lengths = self.column("lengths").astype(np.int64)
        where = self.folder / (ARROW_FILE if self.storage == "arrow" else "positions")
        if len(positions):
            low, high = positions.min(axis=0), positions.max(axis=0)
            if (low < 0).any() or high[0] >= g.tubelets or high[1] >= g.rows or high[2] >= g.cols:
                raise FormatError(
                    where, "positions", f"a position lies outside the {g.tubelets}x{g.rows}x{g.cols} grid"
                )
            if lengths.min() < 1 or (positions[:, 0] + lengths).max() > g.tubelets:
                raise FormatError(where, "lengths", f"a run length is below 1 or runs past tubelet {g.tubelets}")
        labels = self.column("label")
        if len(labels) and labels.min() < 0:
            raise FormatError(where, "label", "a label is negative")

    def column(self, name: str) -> np.ndarray:
        """A whole per-row or per-token column, for reports that read metadata only."""
        if self.storage == "zarr":
            if name == "num_tokens":
                return np.diff(self._offsets).astype(np.int32)
            if name not in self._cache:
                self._cache[name] = (self._pixels() if name == "tokens" else self._arrays[name])[:]
            return self._cache[name]
        return self._arrow_values(name)

    def read(self, row: int, fields: Sequence[str]) -> ClipRecord:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        values: dict[str, Any] = {}
        for name in fields:
            if name == "num_tokens":
                values[name] = end - start
            elif name in ("positions", "lengths", "tokens"):
                if self.storage == "arrow":
                    values[name] = self._arrow_values(name)[start:end]
                elif self.preload or name in self._cache:
                    values[name] = self.column(name)[start:end]
                else:
                    values[name] = (self._pixels() if name == "tokens" else self._arrays[name])[start:end]
            elif self.storage == "zarr":
                values[name] = self.column(name)[row]
            else:
                values[name] = self._arrow_values(name)[row]
        for name in ("label", "clip"):
            if name in values:
                values[name] = int(values[name])
        if "video" in values:
            values["video"] = str(values["video"])
        return ClipRecord(**values)

    def _arrow_values(self, name: str) -> np.ndarray:
        """A whole Arrow column as numpy, per token ([N, ...]) or per row ([R, ...]): views of the
        memory-mapped file where Arrow's layout allows (all but strings and bits), made once per
        shard, so that reading a clip is slicing arrays."""
        if name in self._cache:
            return self._cache[name]
        table = self._pixels() if name == "tokens" else self._table
        column = table.column(name).chunk(0)
        if name == "video":
            values = np.array(column.to_pylist(), dtype=object)
        elif name in ("label", "clip", "num_tokens"):
            values = column.to_numpy()
        else:
            # List columns: the flat values, whose list offsets start at 0 (checked on opening).
            offsets = column.offsets.to_numpy()
            n = int(offsets[-1])
            flat = column.values
            if name in ("positions", "tokens"):
                width = flat.type.list_size
                values = flat.values.slice(0, n * width).to_numpy(zero_copy_only=False).reshape(n, width)
            else:
                values = flat.slice(0, n).to_numpy(zero_copy_only=False)
                if name in ("frame_indices", "padded"):
                    g = self.geometry
                    values = values.reshape(self.rows, g.frames if name == "frame_indices" else g.tubelets)
        values.flags.writeable = False  # rows handed out are views of it
        self._cache[name] = values
        return values


def _open_arrow(path: Path, schema: Any) -> Any:
    """An Arrow IPC file, memory-mapped, as a table of one chunk per column (also with 0 rows)."""
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    if not table.schema.equals(schema):
        found = {field.name: field.type for field in table.schema}
        for field in schema:
            if field.name not in found:
                raise FormatError(path, field.name, "the column is missing")
            if found[field.name] != field.type:
                raise FormatError(path, field.name, f"is {found[field.name]}, the format says {field.type}")
        raise FormatError(path, "schema", f"is\n{table.schema}\nthe format says\n{schema}")
    if table.num_rows:
        return table.combine_chunks()
    # No record batch (0 rows) reads as columns of 0 chunks: give each one empty chunk.
    return pa.Table.from_arrays([pa.array([], type=field.type) for field in schema], schema=schema)
