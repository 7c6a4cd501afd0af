"""rlt-prep: a video data pipeline for training video transformers with Run-Length Tokenization."""

from importlib.metadata import PackageNotFoundError, version

from rlt.dataset import open_dataset
from rlt.pipeline import PackedTokens, VideoDecodeError, run_length_tokenize

try:
    __version__ = version("rlt-prep")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["PackedTokens", "VideoDecodeError", "__version__", "open_dataset", "run_length_tokenize"]
