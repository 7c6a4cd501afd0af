"""Training checkpoints: one file per saved step, written atomically, loaded with ``weights_only``.

A checkpoint is a dict of tensors and plain values (so ``torch.load(..., weights_only=True)`` reads
it): ``version``, ``step``, ``model`` (its state dict), ``model_config``, ``train_config``,
``data`` (what the clips were cut and tokenized with), ``optimizer``, ``schedule``, ``loaders``
(every rank's loader state) and ``rng`` (every rank's generators).
"""

from __future__ import annotations

import argparse
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from rlt.dataset import open_atomic

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"step-(\d+)\.pt")
# What torch's weights-only unpickler names when it refuses a class or function.
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], *, keep: int = 2) -> Path:
    """Writes ``state`` as ``folder/step-NNNNNNNN.pt`` (temporary name, fsync, rename) and keeps the
    newest ``keep`` checkpoints."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    # Buffered in large writes: torch's zip writer writes each record on its own.
    with open_atomic(path, "wb", buffering=16 << 20) as f:
        sink = _Sink(f)
        try:
            torch.save({"version": CHECKPOINT_VERSION, "step": step, **state}, cast(IO[bytes], sink))
        except RuntimeError:
            if sink.error is None:
                raise
            raise sink.error from None  # a full disk, named by open_atomic
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


class _Sink:
    """The file `torch.save` writes through, keeping the OSError of a failed write: torch's zip
    writer reports it only as a RuntimeError, "unexpected pos"."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def list_checkpoints(folder: Path) -> list[Path]:
    """The folder's checkpoints, oldest first (temporary files of an interrupted save are not listed)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a file; else the newest checkpoint in it, or in its ``ckpt`` folder."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path, path / "ckpt"):
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    raise FileNotFoundError(f"no checkpoint at {path} (expected a step-*.pt file, or a folder holding them)")


def read_weights(path: Path) -> Any:
    """``torch.load`` of a file of tensors and plain values (never arbitrary pickle), on the CPU.

    ``argparse.Namespace`` is the one class allowed beyond torch's own list: VideoMAE's and
    VideoMAE-v2's fine-tuning scripts save their ``args`` in every checkpoint they write.

    Raises:
        ValueError: naming the file, when it is not such a file (torch's unpickler raises many
            kinds of errors on damaged or foreign bytes), or when it pickles anything else.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False, which would run the file's code: name what it holds.
        found = _PICKLED_GLOBAL.search(str(e))
        if found:
            raise ValueError(
                f"{path} pickles {found.group(1)}, which is not loaded: only tensors, plain values and "
                "argparse.Namespace are (a checkpoint is never unpickled as arbitrary code)"
            ) from e
        raise ValueError(f"{path} is not a readable checkpoint (UnpicklingError: {e})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, IndexError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a checkpoint on the CPU, tensors and plain values only; names the file when it is bad."""
    path = find_checkpoint(path)
    state = read_weights(path)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise ValueError(f"{path}: checkpoint version {version!r} is not {CHECKPOINT_VERSION}")
    state["path"] = str(path)
    return state


def rng_state() -> dict[str, Any]:
    """This process's random generators, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value
