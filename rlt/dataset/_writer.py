"""`ShardWriter`: a shard's clips in, one committed shard folder out.

A shard folder that exists is complete: it is written under a temporary name, every file flushed,
and renamed into place in one step. Committing a shard that another attempt committed first keeps
the first copy (both hold the same bytes).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rlt.dataset._files import checksum, file_list, fsync_tree
from rlt.dataset._format import (
    SHARDS,
    FailedVideo,
    FileEntry,
    Geometry,
    ShardMeta,
    check_shard_name,
    read_shard_meta,
    write_shard_meta,
)
from rlt.dataset._storage import Storage, expected_files, write_columns

if TYPE_CHECKING:  # the dataset layer reads and writes without importing torch's pipeline
    from rlt.pipeline import PackedTokens


def shard_folder(root: Path, name: str) -> Path:
    """Where shard ``name`` of the dataset at ``root`` lives (``root/shards/name``)."""
    return root / SHARDS / check_shard_name(name, root, "shard name")


class ShardWriter:
    """Collects the clips of one shard, then writes and commits them.

    Args:
        root: the dataset folder.
        name: the shard's name, ``shard-NNNNN``.
        storage: ``"arrow"`` or ``"zarr"``.
        geometry: the clips' shape; every batch added must match it.
    """

    def __init__(self, root: Path, name: str, *, storage: Storage, geometry: Geometry) -> None:
        self.root, self.folder = Path(root), shard_folder(Path(root), name)
        self.name, self.storage, self.geometry = name, storage, geometry
        self._batches: list[PackedTokens] = []
        self._errors: list[FailedVideo] = []

    def add(self, batch: PackedTokens) -> None:
        """Adds ``batch``'s clips (which must say what each clip is: see `PackedTokens.with_clips`)."""
        g = self.geometry
        clips = (batch.labels, batch.padded, batch.frame_indices, batch.videos, batch.clip_ids)
        if any(value is None for value in clips):
            raise ValueError("a shard stores what each clip is: give the batch its clips with `with_clips`")
        if batch.keep.shape[1:] != (g.tubelets, g.rows, g.cols) or batch.tokens.shape[1] != g.token_dim:
            raise ValueError(
                f"the batch's clips are {list(batch.keep.shape[1:])} tubelets x patches with {batch.tokens.shape[1]} "
                f"values per token; this dataset's are {[g.tubelets, g.rows, g.cols]} with {g.token_dim}"
            )
        # Tubelets of 8 frames and patches of 4 fill the same grid and token width as 2 and 8.
        if batch.tubelet_size * g.tubelets != g.frames:
            raise ValueError(
                f"the batch's clips have {batch.tubelet_size * g.tubelets} frames; this dataset's have {g.frames}"
            )
        batch = batch.to("cpu")
        if batch.labels is not None and batch.labels.numel() and int(batch.labels.min()) < 0:
            raise ValueError("a clip's label is negative; the format stores class indices >= 0")
        self._batches.append(batch)

    def fail(self, video: str, reason: str) -> None:
        """Records a video of the shard that gave no clips."""
        self._errors.append(FailedVideo(video, reason))

    def commit(self, *, videos: int, decoder: str) -> tuple[ShardMeta, bool]:
        """Writes the shard under a temporary name and renames it into place.

        Args:
            videos: the shard's videos, failed ones included.
            decoder: the decoder chain that read them.

        Returns:
            The shard's meta, and whether this call committed it (False: another attempt had).
        """
        if videos < len(self._errors):
            raise ValueError(f"{self.name}: {len(self._errors)} videos failed, more than its {videos} videos")
        if self.folder.is_dir():
            return read_shard_meta(self.folder), False
        tmp = self.root / SHARDS / f".tmp-{self.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            columns = self._columns()
            write_columns(tmp, columns, storage=self.storage, geometry=self.geometry)
            files = file_list(tmp)
            missing = expected_files(self.storage) - {f["path"] for f in files}
            if missing:
                # Someone removed files while we wrote; committing would publish a broken shard.
                raise OSError(f"{tmp} lost {sorted(missing)} while being written")
            meta = ShardMeta(
                name=self.name,
                rows=len(columns["label"]),
                tokens=len(columns["lengths"]),
                dense_tokens=sum(b.dense_tokens for b in self._batches),
                videos=videos,
                failed=len(self._errors),
                errors=tuple(self._errors),
                decoder=decoder,
                files=tuple(FileEntry(**f) for f in files),
                bytes=sum(f["bytes"] for f in files),
                checksum=checksum(files),
            )
            write_shard_meta(tmp, meta)
            fsync_tree(tmp)
            try:
                os.rename(tmp, self.folder)
            except OSError:
                if not self.folder.is_dir():
                    raise
                shutil.rmtree(tmp)  # another attempt committed first; its bytes are ours
                return read_shard_meta(self.folder), False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta, True

    def _columns(self) -> dict[str, np.ndarray]:
        return packed_columns(self._batches, self.geometry)


def packed_columns(batches: Sequence[PackedTokens], geometry: Geometry) -> dict[str, np.ndarray]:
    """The columns (see FORMAT.md) of CPU batches that say what each clip is, concatenated once:
    a shard's, or the clips of one `rlt-prep serve` response."""
    g = geometry

    def cat(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        parts = [getattr(b, name).numpy() for b in batches]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype=dtype)

    counts = np.array([n for b in batches for n in b.seqlens().tolist()], dtype=np.int64)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return {
        "video": np.array([v for b in batches for v in b.videos or ()], dtype=object),
        "label": cat("labels", (0,), np.int64),
        "clip": np.array([c for b in batches for c in b.clip_ids or ()], dtype=np.int32),
        "frame_indices": cat("frame_indices", (0, g.frames), np.int32),
        "padded": cat("padded", (0, g.tubelets), np.bool_),
        "token_offsets": offsets,
        "positions": cat("positions", (0, 3), np.int16),
        "lengths": cat("lengths", (0,), np.int16),
        "tokens": cat("tokens", (0, g.token_dim), np.uint8),
    }
