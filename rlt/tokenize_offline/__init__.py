"""`rlt-prep tokenize`: decode and tokenize every video once, into sharded datasets, on Ray."""

from rlt.tokenize_offline._config import TokenizeConfig
from rlt.tokenize_offline._executor import RAY_AFTER
from rlt.tokenize_offline._job import ConfigMismatchError, JobSummary, ManifestChangedError, Progress, tokenize_dataset
from rlt.tokenize_offline._shard import ShardSpec, run_shard

__all__ = [
    "RAY_AFTER",
    "ConfigMismatchError",
    "JobSummary",
    "ManifestChangedError",
    "Progress",
    "ShardSpec",
    "TokenizeConfig",
    "run_shard",
    "tokenize_dataset",
]
