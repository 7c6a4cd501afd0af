"""The on-disk token dataset: one format (FORMAT.md) for the writer, the loader and the reports."""

from rlt.dataset._files import META, checksum, file_list, fsync_tree, open_atomic, write_json_atomic
from rlt.dataset._reader import (
    FORMAT,
    FORMAT_VERSION,
    INDEX,
    SHARDS,
    CorruptShardError,
    ShardInfo,
    TokenDataset,
    open_dataset,
    read_index,
    verify_shard,
)
from rlt.dataset._record import FIELDS, ClipRecord
from rlt.dataset._storage import STORAGES, ShardReader, Storage, expected_files, write_rows

__all__ = [
    "FIELDS",
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX",
    "META",
    "SHARDS",
    "STORAGES",
    "ClipRecord",
    "CorruptShardError",
    "ShardInfo",
    "ShardReader",
    "Storage",
    "TokenDataset",
    "checksum",
    "expected_files",
    "file_list",
    "fsync_tree",
    "open_atomic",
    "open_dataset",
    "read_index",
    "verify_shard",
    "write_json_atomic",
    "write_rows",
]
