"""`export_dataset`: a dataset's rows as Parquet or Arrow IPC stream files, one per shard, for tools
that read those and not our shards (HF datasets, DuckDB, Polars, Spark). See FORMAT.md."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rlt._checks import check_choice
from rlt.dataset._files import open_atomic
from rlt.dataset._format import FORMAT, FORMAT_VERSION
from rlt.dataset._reader import TokenDataset, open_dataset
from rlt.dataset._storage import ShardReader, arrow_arrays, arrow_schemas

ExportFormat = Literal["parquet", "arrow-stream"]
EXPORT_FORMATS = ("parquet", "arrow-stream")
SUFFIXES = {"parquet": ".parquet", "arrow-stream": ".arrow"}
# The schema metadata key that holds index.json's config and classes, as JSON.
METADATA_KEY = b"rlt"
# Rows per Parquet row group (and per Arrow record batch) are picked to hold about this many bytes
# before compression: large enough for DuckDB and Polars to read fast, small enough that a reader
# that streams row groups (HF datasets, Spark) holds one comfortably.
GROUP_BYTES = 128 << 20


@dataclass(frozen=True)
class ExportSummary:
    """What `export_dataset` wrote."""

    out: Path
    format: str
    files: int
    rows: int
    bytes: int


def export_dataset(
    root: str | Path, out: str | Path, *, format: ExportFormat, columns: Sequence[str] | None = None
) -> ExportSummary:
    """Writes a dataset's rows into a new folder, one file per shard, with the types of FORMAT.md.

    Reads one shard at a time, so memory holds one shard whatever the dataset's size. Each file is
    written under a temporary name and renamed when complete. A shard without rows gives a valid
    file without rows. The schema metadata holds, under ``b"rlt"``, JSON of the dataset's format,
    version, config and classes, and the shard's name.

    Args:
        root: the dataset folder (``OUT`` of `rlt-prep tokenize`), Zarr or Arrow.
        out: the folder to write; it must not exist or be empty.
        format: ``"parquet"`` (``shard-00000.parquet``, zstd) or ``"arrow-stream"``
            (``shard-00000.arrow``, uncompressed Arrow IPC streams, as ``datasets.Dataset.from_file``
            reads them).
        columns: the fields to write, in this order (default: all of them).

    Raises:
        ValueError: an unknown format or column, or ``out`` is not empty.
        FileNotFoundError: ``root`` is not a finished dataset.
        CorruptShardError: a shard does not match its checksum.
    """
    check_choice("format", format, EXPORT_FORMATS)
    if columns is not None and (not columns or len(set(columns)) != len(columns)):
        raise ValueError(f"columns must name at least one field, each once, got {list(columns)}")
    dataset = open_dataset(root, columns=columns)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; export writes into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    schema = _schema(dataset)
    files = rows = size = 0
    for k, info in enumerate(dataset.shards):
        metadata = {METADATA_KEY: json.dumps(_metadata(dataset, info.name))}
        table = _shard_table(dataset.shard(k), schema.with_metadata(metadata))
        dataset.release(k)
        path = out / f"{info.name}{SUFFIXES[format]}"
        _write(table, path, format)
        files, rows, size = files + 1, rows + table.num_rows, size + path.stat().st_size
    return ExportSummary(out=out, format=format, files=files, rows=rows, bytes=size)


def _metadata(dataset: TokenDataset, shard: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": dataset.config,
        "classes": list(dataset.index.classes) if dataset.index.classes else None,
        "shard": shard,
    }


def _schema(dataset: TokenDataset) -> Any:
    """The types of the Arrow storage (FORMAT.md) for the columns asked for, the same in every file:
    those of shards without rows too."""
    import pyarrow as pa

    clips, tokens = arrow_schemas(dataset.geometry)
    fields = {field.name: field for schema in (clips, tokens) for field in schema}
    return pa.schema([fields[name] for name in dataset.columns])


def _shard_table(reader: ShardReader, schema: Any) -> Any:
    """One shard's rows as an Arrow table of ``schema``, built as the Arrow storage builds its files."""
    import pyarrow as pa

    if reader.rows == 0:
        return schema.empty_table()
    offsets = np.concatenate([[0], np.cumsum(reader.column("num_tokens"), dtype=np.int64)])
    columns = {"token_offsets": offsets} | {f.name: reader.column(f.name) for f in schema if f.name != "num_tokens"}
    arrays = arrow_arrays(columns, reader.geometry)
    return pa.Table.from_arrays([arrays[field.name] for field in schema], schema=schema)


def _write(table: Any, path: Path, format: ExportFormat) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    group_rows = max(1, GROUP_BYTES * table.num_rows // max(table.nbytes, 1))
    with open_atomic(path, "wb") as f:
        if format == "parquet":
            # A shard without rows gives one row group of 0 rows. HF datasets (up to 5.2 at least) reads it
            # only given a batch_size, and a file without row groups not at all (huggingface/datasets#8397).
            pq.write_table(table, f, compression="zstd", row_group_size=group_rows)
        else:
            with pa.ipc.new_stream(f, table.schema) as writer:
                # At least one record batch: load_dataset("arrow") fails on a file without any (same issue).
                if table.num_rows:
                    writer.write_table(table, max_chunksize=group_rows)
                else:
                    writer.write_batch(pa.RecordBatch.from_pylist([], schema=table.schema))
