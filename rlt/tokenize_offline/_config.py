"""The offline job's configuration: everything that decides the bytes of the dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rlt._checks import check_choice
from rlt.dataset import STORAGES, Geometry, Storage
from rlt.pipeline import Backend, ClipSampling, RLTConfig, check_backend


@dataclass(frozen=True)
class TokenizeConfig:
    """How `rlt-prep tokenize` cuts, tokenizes and stores clips.

    A re-run into the same folder must use the same configuration (or ``overwrite``), so this is
    recorded in ``plan.json`` and ``index.json``.

    Attributes:
        storage: ``"arrow"`` (default: memory-mapped and uncompressed, the fastest to write and to
            train from) or ``"zarr"`` (zstd, about half the bytes on disk; see FORMAT.md).
        shard_size: videos per shard.
        sampling: which clips to cut and how to size them.
        rlt: the RLT stage's options.
        backend: the decoder, or a chain of them (``"dali,decord"``; see `rlt.pipeline.decode_batch`).
    """

    storage: Storage = "arrow"
    shard_size: int = 64
    sampling: ClipSampling = field(default_factory=ClipSampling)
    rlt: RLTConfig = field(default_factory=RLTConfig)
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        check_choice("storage", self.storage, STORAGES)
        if not (isinstance(self.shard_size, int) and self.shard_size >= 1):
            raise ValueError(f"shard_size must be an int >= 1, got {self.shard_size!r}")
        check_backend(self.backend)
        if self.sampling.crop is None:
            raise ValueError("offline datasets need a fixed clip size: set sampling.crop")
        if self.sampling.crop % self.rlt.patch_size:
            raise ValueError(f"crop={self.sampling.crop} is not a multiple of patch_size={self.rlt.patch_size}")
        if self.sampling.num_frames % self.rlt.tubelet_size:
            raise ValueError(
                f"num_frames={self.sampling.num_frames} is not a multiple of tubelet_size={self.rlt.tubelet_size}"
            )
        self.geometry  # noqa: B018 (refuses grids the format cannot store)

    @property
    def geometry(self) -> Geometry:
        """The shape of every clip: frames, tubelets, patch grid, values per token."""
        return Geometry.of(
            num_frames=self.sampling.num_frames,
            crop=self.sampling.crop or 0,
            tubelet_size=self.rlt.tubelet_size,
            patch_size=self.rlt.patch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TokenizeConfig:
        return cls(
            storage=values["storage"],
            shard_size=values["shard_size"],
            sampling=ClipSampling(**values["sampling"]),
            rlt=RLTConfig(**values["rlt"]),
            backend=values["backend"],
        )
