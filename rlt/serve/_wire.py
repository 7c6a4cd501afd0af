"""The response of ``POST /v1/tokenize``: one video's clips as an Arrow IPC stream.

The columns are the dataset's (FORMAT.md; `rlt.dataset._storage.arrow_schemas`), ``clips.arrow``'s
fields followed by ``tokens.arrow``'s, one row per clip, in one record batch. The schema's metadata
holds the tubelet and patch sizes and the clip geometry, so that the client rebuilds the exact
`PackedTokens` the server made: ``cu_seqlens`` from ``num_tokens``, ``keep`` from the positions.

Shape legend: B clips, N kept tokens, G tubelets per clip, h x w patch grid, D values per token.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from rlt.dataset._format import Geometry
from rlt.dataset._storage import arrow_arrays, arrow_schemas
from rlt.dataset._writer import packed_columns
from rlt.pipeline import PackedTokens

MEDIA_TYPE = "application/vnd.apache.arrow.stream"
WIRE_VERSION = 1


def geometry_of(packed: PackedTokens) -> Geometry:
    """The clips' shape, read off the batch (native-size clips need not be square)."""
    _, tubelets, rows, cols = packed.keep.shape
    return Geometry(packed.tubelet_size * tubelets, tubelets, rows, cols, packed.tokens.shape[1])


def response_schema(geometry: Geometry, *, tubelet_size: int, patch_size: int) -> Any:
    import pyarrow as pa

    clips, tokens = arrow_schemas(geometry)
    meta = {
        "rlt.wire_version": str(WIRE_VERSION),
        "rlt.tubelet_size": str(tubelet_size),
        "rlt.patch_size": str(patch_size),
        "rlt.geometry": json.dumps(
            {"frames": geometry.frames, "tubelets": geometry.tubelets, "rows": geometry.rows, "cols": geometry.cols}
        ),
    }
    return pa.schema([*clips, *tokens], metadata=meta)


def to_arrow_stream(packed: PackedTokens) -> bytes:
    """One video's clips (a batch that says what each clip is) as the bytes of an Arrow IPC stream."""
    import pyarrow as pa

    packed = packed.to("cpu")
    geometry = geometry_of(packed)
    schema = response_schema(geometry, tubelet_size=packed.tubelet_size, patch_size=packed.patch_size)
    arrays = arrow_arrays(packed_columns([packed], geometry), geometry)
    batch = pa.record_batch([arrays[field.name] for field in schema], schema=schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue())


def from_arrow_stream(data: bytes) -> PackedTokens:
    """The `PackedTokens` of a response, with each clip's video, clip number, source frames and
    padded tubelets (labels are -1: the server knows no classes).

    Raises:
        ValueError: the bytes are not a response of this wire version.
    """
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
    except pa.ArrowInvalid as e:
        raise ValueError(f"the response is not an Arrow IPC stream: {e}") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("rlt.wire_version") != str(WIRE_VERSION):
        raise ValueError(f"the response's wire version is {meta.get('rlt.wire_version')!r}, not {WIRE_VERSION}")
    ts, p = int(meta["rlt.tubelet_size"]), int(meta["rlt.patch_size"])
    g = json.loads(meta["rlt.geometry"])
    geometry = Geometry(g["frames"], g["tubelets"], g["rows"], g["cols"], ts * p * p * 3)
    expected = response_schema(geometry, tubelet_size=ts, patch_size=p)
    if not table.schema.equals(expected):
        raise ValueError(f"the response's schema is\n{table.schema}\nnot\n{expected}")
    table = table.combine_chunks()
    b = table.num_rows

    def flat(name: str, width: int | None = None) -> np.ndarray:
        column = table.column(name)
        values = column.chunk(0).flatten() if column.num_chunks else pa.array([], type=column.type.value_type)
        if width is not None:
            values = values.flatten()
        array = values.to_numpy(zero_copy_only=False)
        return array.reshape(-1, width) if width is not None else array

    num_tokens = table.column("num_tokens").to_numpy().astype(np.int64) if b else np.zeros(0, np.int64)
    cu_seqlens = torch.zeros(b + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.from_numpy(np.cumsum(num_tokens)).to(torch.int32)
    positions_N3 = torch.from_numpy(flat("positions", 3).astype(np.int64))
    keep_BGhw = torch.zeros(b, geometry.tubelets, geometry.rows, geometry.cols, dtype=torch.bool)
    clip_N = torch.repeat_interleave(torch.arange(b), torch.from_numpy(num_tokens))
    keep_BGhw[clip_N, positions_N3[:, 0], positions_N3[:, 1], positions_N3[:, 2]] = True
    return PackedTokens(
        tokens=torch.from_numpy(flat("tokens", geometry.token_dim).copy()),
        positions=positions_N3,
        lengths=torch.from_numpy(flat("lengths").astype(np.int64)),
        cu_seqlens=cu_seqlens,
        keep=keep_BGhw,
        tubelet_size=ts,
        patch_size=p,
        labels=torch.from_numpy(table.column("label").to_numpy().astype(np.int64)),
        padded=torch.from_numpy(flat("padded").astype(np.bool_).reshape(b, geometry.tubelets)),
        frame_indices=torch.from_numpy(flat("frame_indices").astype(np.int64).reshape(b, geometry.frames)),
        videos=tuple(table.column("video").to_pylist()),
        clip_ids=tuple(int(c) for c in table.column("clip").to_pylist()),
    )
