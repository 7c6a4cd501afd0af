"""The on-disk token dataset: one format (FORMAT.md) for the writer, the loader and the reports."""

from rlt.dataset._export import export_dataset
from rlt.dataset._files import META, cache_root, checksum, file_list, open_atomic, write_json_atomic
from rlt.dataset._format import (
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    PLAN,
    SHARDS,
    STORAGES,
    DatasetIndex,
    FailedVideo,
    FileEntry,
    FormatError,
    Geometry,
    ShardEntry,
    ShardMeta,
    Totals,
    check_shard_name,
    read_index,
    read_plan,
    read_shard_meta,
    write_index,
)
from rlt.dataset._reader import CorruptShardError, TokenDataset, open_dataset, verify_shard
from rlt.dataset._record import FIELDS, ClipRecord
from rlt.dataset._storage import ShardReader, Storage
from rlt.dataset._writer import ShardWriter, shard_folder

__all__ = [
    "FIELDS",
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX",
    "META",
    "PLAN",
    "SHARDS",
    "STORAGES",
    "ClipRecord",
    "CorruptShardError",
    "DatasetIndex",
    "FailedVideo",
    "FileEntry",
    "FormatError",
    "Geometry",
    "ShardEntry",
    "ShardMeta",
    "ShardReader",
    "ShardWriter",
    "Storage",
    "TokenDataset",
    "Totals",
    "cache_root",
    "check_shard_name",
    "checksum",
    "export_dataset",
    "file_list",
    "open_atomic",
    "open_dataset",
    "read_index",
    "read_plan",
    "read_shard_meta",
    "shard_folder",
    "verify_shard",
    "write_index",
    "write_json_atomic",
]
