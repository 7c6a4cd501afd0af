"""`rlt-prep export`: Parquet and Arrow stream files equal to the dataset, read by the tools FORMAT.md shows."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rlt import open_dataset
from rlt.cli import app
from rlt.dataset import FIELDS, FORMAT, FORMAT_VERSION, ClipRecord, export_dataset
from rlt.pipeline import ClipSampling
from rlt.samples import make_samples
from rlt.tokenize_offline import TokenizeConfig, tokenize_dataset

SAMPLING = ClipSampling(num_frames=8, frame_interval=2, clips_per_video=2, size=64, crop=64)
SPEC = Path(__file__).resolve().parents[1] / "rlt" / "dataset" / "FORMAT.md"
SECTION = "## Reading a dataset with other tools"
SUFFIX = {"parquet": ".parquet", "arrow-stream": ".arrow"}


def optional(name: str) -> ModuleType:
    """A tool of the test extra: skipped where it is not installed, failed under CI, which must have it."""
    try:
        return pytest.importorskip(name)
    except pytest.skip.Exception:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {name} (the test extra in pyproject.toml)")
        raise


def blocks(language: str) -> list[str]:
    """The code blocks of FORMAT.md's section on other tools."""
    section = SPEC.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def run_snippet(tool: str, out: Path) -> dict[str, Any]:
    """Runs FORMAT.md's snippet for ``tool`` on the dataset ``out``; returns its variables."""
    (snippet,) = [b for b in blocks("py") if re.search(rf"^import {tool}\b", b, re.M)]
    scope: dict[str, Any] = {}
    exec(snippet.replace("OUT", str(out)), scope)
    return scope


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same 6 clips in Arrow and in Zarr, named classes, one video per shard: shard-00002 (a
    broken file) has no rows."""
    folder = tmp_path_factory.mktemp("export")
    make_samples(folder, num_videos=3, num_frames=24, height=64, width=96)
    (folder / "broken.mp4").write_bytes(b"not a video")
    rows = ["sample_000_right.mp4,right", "sample_001_left.mp4,left", "broken.mp4,left", "sample_002_right.mp4,right"]
    manifest = folder / "classes.csv"
    manifest.write_text("path,label\n" + "\n".join(rows) + "\n")
    roots = {}
    for storage in ("arrow", "zarr"):
        config = TokenizeConfig(storage=storage, shard_size=1, sampling=SAMPLING, backend="decord")  # type: ignore[arg-type]
        tokenize_dataset(manifest, folder / storage, config, workers=1)  # one worker: in this process, no Ray
        roots[storage] = folder / storage
        assert [s.rows for s in open_dataset(roots[storage]).shards] == [2, 2, 0, 2]
    return roots


@pytest.fixture(scope="module")
def exported(sources: dict[str, Path]) -> Path:
    """The Arrow dataset exported by FORMAT.md's commands, run as written: OUT-parquet and OUT-arrow."""
    root = sources["arrow"]
    (commands,) = blocks("bash")
    for line in commands.splitlines():
        program, *args = shlex.split(line.replace("OUT", str(root)))
        assert program == "rlt-prep"
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert re.fullmatch(rf"exported 6 clips into 4 \S+ files, [0-9.]+ MB, in {re.escape(args[2])}\n", result.output)
    return root


def assert_row_equals(record: ClipRecord, row: dict[str, Any], fields: tuple[str, ...] = FIELDS) -> None:
    """A row as another tool gives it (Python or NumPy values) equals our record."""
    for name in fields:
        ours, theirs = getattr(record, name), row[name]
        if isinstance(ours, np.ndarray):
            theirs = np.asarray(theirs if len(theirs) else np.zeros(ours.shape), dtype=ours.dtype)
            assert theirs.shape == ours.shape and np.array_equal(theirs, ours), (record, name)
        else:
            assert theirs == ours, (record, name)


def read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


@pytest.mark.parametrize("storage", ["arrow", "zarr"])
@pytest.mark.parametrize("format", ["parquet", "arrow-stream"])
def test_every_field_of_every_row_round_trips(
    tmp_path: Path, sources: dict[str, Path], storage: str, format: str
) -> None:
    dataset = open_dataset(sources[storage])
    summary = export_dataset(dataset.root, tmp_path / "out", format=format)  # type: ignore[arg-type]

    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == [s.name + SUFFIX[format] for s in dataset.shards]  # no temporary file left
    assert (summary.files, summary.rows, summary.bytes) == (4, 6, sum(f.stat().st_size for f in files))
    tables = [read(f) for f in files]
    assert [t.num_rows for t in tables] == [2, 2, 0, 2]  # the shard without rows: a valid file without rows
    d = dataset.geometry.token_dim
    types = {
        "video": pa.string(),
        "label": pa.int64(),
        "clip": pa.int32(),
        "frame_indices": pa.list_(pa.int32()),
        "padded": pa.list_(pa.bool_()),
        "num_tokens": pa.int32(),
        "positions": pa.list_(pa.list_(pa.int16(), 3)),
        "lengths": pa.list_(pa.int16()),
        "tokens": pa.list_(pa.list_(pa.uint8(), d)),
    }
    for shard, table in zip(dataset.shards, tables, strict=True):
        assert table.schema.equals(pa.schema(types)), table.schema
        assert json.loads(table.schema.metadata[b"rlt"]) == {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": dataset.config,
            "classes": ["left", "right"],
            "shard": shard.name,
        }
    rows = pa.concat_tables(tables).to_pylist()
    for record, row in zip(dataset, rows, strict=True):
        assert_row_equals(record, row)


def test_columns_are_written_in_the_order_asked(tmp_path: Path, sources: dict[str, Path]) -> None:
    export_dataset(sources["zarr"], tmp_path / "out", format="parquet", columns=["num_tokens", "video", "label"])
    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["num_tokens", "video", "label"]
    for record, row in zip(open_dataset(sources["zarr"]), table.to_pylist(), strict=True):
        assert_row_equals(record, row, ("num_tokens", "video", "label"))


def test_format_md_pyarrow_reads_the_native_shards(sources: dict[str, Path]) -> None:
    clips = run_snippet("pyarrow", sources["arrow"])["clips"]
    assert "tokens" not in clips.column_names
    for record, row in zip(open_dataset(sources["arrow"]), clips.to_pylist(), strict=True):
        assert_row_equals(record, row, FIELDS[:-1])


def test_format_md_hf_datasets_reads_the_export(
    tmp_path: Path, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = optional("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # load_dataset copies here
    scope = run_snippet("datasets", exported)
    records = list(open_dataset(exported))
    assert len(scope["shard"]) == 2
    for record, row in zip(records, scope["shard"].with_format("numpy"), strict=False):
        assert_row_equals(record, row)
    for name in ("arrow_rows", "parquet_rows"):
        for record, row in zip(records, scope[name].with_format("numpy"), strict=True):
            assert_row_equals(record, row)


def test_format_md_duckdb_counts_the_labels(exported: Path) -> None:
    optional("duckdb")
    counts = run_snippet("duckdb", exported)["counts"]
    assert sorted(counts) == sorted(Counter(r.label for r in open_dataset(exported, columns=["label"])).items())


def test_format_md_polars_reads_the_export(exported: Path) -> None:
    pl = optional("polars")
    frame = run_snippet("polars", exported)["frame"]
    assert frame.schema["tokens"] == pl.List(pl.Array(pl.UInt8, open_dataset(exported).geometry.token_dim))
    rows = {(row["video"], row["clip"]): row for row in frame.iter_rows(named=True)}
    assert len(rows) == frame.height == 6
    for record in open_dataset(exported):
        assert_row_equals(record, rows[record.video, record.clip])


def test_a_shard_without_rows_gives_a_file_every_tool_reads(exported: Path) -> None:
    datasets, duckdb, polars = optional("datasets"), optional("duckdb"), optional("polars")
    parquet, arrow = Path(f"{exported}-parquet"), Path(f"{exported}-arrow")
    empty = datasets.Dataset.from_file(str(arrow / "shard-00002.arrow"))
    assert len(empty) == 0
    assert empty.features == datasets.Dataset.from_file(str(arrow / "shard-00000.arrow")).features
    frame = polars.read_parquet(parquet / "shard-00002.parquet")
    assert frame.height == 0 and frame.schema == polars.read_parquet(parquet / "shard-00000.parquet").schema
    assert duckdb.sql(f"SELECT count(*) FROM '{parquet / 'shard-00002.parquet'}'").fetchall() == [(0,)]


def test_the_cli_refuses_bad_input_and_writes_nothing(tmp_path: Path, sources: dict[str, Path]) -> None:
    root = str(sources["arrow"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [
        ([root, str(tmp_path / "full"), "--format", "parquet"], "already exists and is not an empty folder"),
        ([str(tmp_path), str(tmp_path / "a"), "--format", "parquet"], "is not a finished rlt-prep dataset"),
        ([root, str(tmp_path / "b"), "--format", "csv"], "format must be one of 'parquet', 'arrow-stream'"),
        ([root, str(tmp_path / "c"), "--format", "parquet", "--columns", "video,pixels"], "unknown columns ['pixels']"),
        ([root, str(tmp_path / "d"), "--format", "parquet", "--columns", "video,video"], "each once"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["export", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and message in " ".join(result.output.split()), result.output
    assert [p.name for p in tmp_path.iterdir()] == ["full"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
