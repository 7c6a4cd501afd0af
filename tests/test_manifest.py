"""`read_manifest`: the file's encodings and line endings, and labels checked when it is read."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rlt.pipeline import read_manifest
from rlt.pipeline._manifest import ManifestError

INT64_MAX = 2**63 - 1
THROUGHOUT = "; use integers >= 0 or class names throughout"


def write(folder: Path, labels: list[str], name: str = "manifest.csv") -> Path:
    """A manifest of videos v0.mp4, v1.mp4, ... with these labels, the header on line 1."""
    path = folder / name
    path.write_text("path,label\n" + "".join(f"v{k}.mp4,{label}\n" for k, label in enumerate(labels)))
    return path


# Labels that read well -----------------------------------------------------------------------------


def error_of(path: Path) -> str:
    """The message of the ValueError reading ``path`` raises."""
    with pytest.raises(ValueError) as caught:
        read_manifest(path)
    return str(caught.value)


def test_integer_labels_are_class_indices(tmp_path: Path) -> None:
    read = read_manifest(write(tmp_path, ["0", "2", "1", "007", str(INT64_MAX)]))
    assert [r.label for r in read.rows] == [0, 2, 1, 7, INT64_MAX]
    assert read.classes is None and len(read) == 5
    assert [r.video for r in read.rows] == [f"v{k}.mp4" for k in range(5)]


def test_class_names_are_numbered_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "manifest.csv"
    path.write_text("path,label\nsub/a.mp4,walk\n/abs/b.mp4,run\nc.mp4,walk\nd.mp4,3d jump\n")
    read = read_manifest(path)
    assert read.classes == ("3d jump", "run", "walk")
    assert [r.label for r in read.rows] == [2, 1, 2, 0]
    assert read.rows[0].path == tmp_path / "sub" / "a.mp4" and read.rows[0].video == "sub/a.mp4"
    assert read.rows[1].path == Path("/abs/b.mp4")


def test_a_header_only_manifest_has_no_rows(tmp_path: Path) -> None:
    read = read_manifest(write(tmp_path, []))
    assert read.rows == () and read.classes is None


# Labels that do not ----------------------------------------------------------------------------------


def test_a_fraction_after_integers_names_the_line_and_the_rows_before(tmp_path: Path) -> None:
    path = write(tmp_path, ["0", "1", "2", "1.0"])
    with pytest.raises(ValueError) as caught:
        read_manifest(path)
    assert str(caught.value) == (
        f"{path}:5: label '1.0' is not an integer >= 0 in plain digits like the labels before it (lines 2-4)"
        + THROUGHOUT
    )
    assert isinstance(caught.value, ManifestError) and caught.value.line == 5 and caught.value.path == path


@pytest.mark.parametrize("label", ["-1", "1.0", "1e3", "0x10", "+3", "1_000", "nan", "-inf", ".5"])
def test_a_number_that_is_not_an_index_is_an_error_among_integers_and_among_names(tmp_path: Path, label: str) -> None:
    among_integers = write(tmp_path, ["0", label, "1"], "integers.csv")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(among_integers))}:3: label '{re.escape(label)}' is not"):
        read_manifest(among_integers)
    among_names = write(tmp_path, ["walk", label, "run"], "names.csv")
    assert error_of(among_names) == (
        f"{among_names}:3: label {label!r} reads as a number, so it is not a class name like the labels before it"
        " (line 2), and it is not a class index (an integer >= 0 in plain digits)" + THROUGHOUT
    )


def test_numbers_alone_that_are_not_indices_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, ["-1", "-2"])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: label '-1' is not an integer >= 0"):
        read_manifest(path)
    path = write(tmp_path, ["1.0", "2.0", "0.0"])  # a float column written by pandas
    with pytest.raises(ValueError, match=r"manifest.csv:2: label '1.0' is not an integer >= 0 in plain digits;"):
        read_manifest(path)


def test_a_name_among_integers_and_an_integer_among_names(tmp_path: Path) -> None:
    path = write(tmp_path, ["0", "1", "walk", "2"])
    assert error_of(path) == (
        f"{path}:4: label 'walk' is a class name, but the labels before it (lines 2-3) are class indices" + THROUGHOUT
    )
    path = write(tmp_path, ["walk", "run", "3"])
    assert error_of(path) == (
        f"{path}:4: label '3' is a class index, but the labels before it (lines 2-3) are class names" + THROUGHOUT
    )


def test_the_kind_is_that_of_most_labels_so_a_slip_in_the_first_row_is_the_one_named(tmp_path: Path) -> None:
    path = write(tmp_path, ["walk", "0", "1", "2"])
    assert error_of(path) == (
        f"{path}:2: label 'walk' is a class name, but the other labels (3 of 4 rows) are class indices" + THROUGHOUT
    )
    # On a tie, the first label decides.
    with pytest.raises(ValueError, match=r"manifest.csv:3: label '0' is a class index, but the labels before it"):
        read_manifest(write(tmp_path, ["walk", "0"]))


def test_an_index_beyond_int64_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, ["0", str(10**23)])
    assert error_of(path) == (
        f"{path}:3: label '100000000000000000000000' is larger than the largest class index, 2**63 - 1 = {INT64_MAX}"
    )
    with pytest.raises(ValueError, match=r"manifest.csv:2: label '9223372036854775808' is larger"):
        read_manifest(write(tmp_path, [str(INT64_MAX + 1)]))
    # More digits than int() takes: still the line, and the label cut short.
    with pytest.raises(ValueError, match=r"manifest.csv:3: label '9{40}\.\.\.' is larger") as caught:
        read_manifest(write(tmp_path, ["1", "9" * 5000]))
    assert len(caught.value.reason) < 150


def test_an_empty_label_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^.*manifest.csv:3: empty label$"):
        read_manifest(write(tmp_path, ["0", " "]))
    with pytest.raises(ValueError, match=r"manifest.csv:4: empty label$"):
        read_manifest(write(tmp_path, ["walk", "run", ""]))


def test_a_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("video,label\na.mp4,0\n", r"bad.csv:1: the header must name a 'path' column"),
        ("path,class\na.mp4,0\n", r"bad.csv:1: the header must name a 'label' column \(beside 'path'\)"),
        ("path\na.mp4\n", r"bad.csv:1: the header must name a 'label' column"),
        ("path,label\na.mp4,0\n,1\n", r"bad.csv:3: empty video path"),
        ("", r"bad.csv: the file is empty"),
        (
            "\n\npath,label\n\na.mp4,0\n\n\nb.mp4,x\n",
            r"csv:8: label 'x' is a class name, but the labels before it \(line 5\)",
        ),
        ("\npath\n", r"bad.csv:2: the header must name a 'label' column"),
    ],
)
def test_header_path_and_label_errors_name_the_file_and_line(tmp_path: Path, text: str, error: str) -> None:
    # Line numbers count the header and blank lines.
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ValueError, match=error):
        read_manifest(bad)


# The file itself ------------------------------------------------------------------------------------


def test_a_byte_order_mark_crlf_whitespace_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf path , label \r\n\r\n a.mp4 , walk \r\n  \r\nb.mp4,run\r\n\r\n")
    read = read_manifest(path)
    assert read.classes == ("run", "walk") and [r.label for r in read.rows] == [1, 0]
    assert [r.video for r in read.rows] == ["a.mp4", "b.mp4"] and read.rows[0].path == tmp_path / "a.mp4"
    path.write_bytes(b"\xef\xbb\xbfpath,label\ra.mp4, 3 \rb.mp4,4\r")  # old Mac line endings
    assert [r.label for r in read_manifest(path).rows] == [3, 4]


def test_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("path,label\r\na.mp4,walk\r\nb.mp4,café\r\n".encode("latin-1"))
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert str(caught.value) == f"{path}:3: not UTF-8 text (byte 0xe9); save it as UTF-8"
    assert not isinstance(caught.value, UnicodeDecodeError) and caught.value.__cause__ is None
    path.write_bytes("path,label\na.mp4,0\n".encode("utf-16"))
    with pytest.raises(ManifestError, match=r"latin1.csv:1: not UTF-8 text \(byte 0xff\)"):
        read_manifest(path)


def test_a_file_the_csv_module_refuses_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, ["0", "x" * 200_000])  # past the csv module's field size limit
    with pytest.raises(ManifestError, match=r"manifest.csv:3: not a valid CSV file \(field larger than field limit"):
        read_manifest(path)


def test_the_error_survives_a_process_boundary(tmp_path: Path) -> None:
    path = write(tmp_path, ["0", "-1"])
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is ManifestError and str(copy) == str(caught.value)
    assert (copy.path, copy.line, copy.reason) == (path, 3, caught.value.reason)


# Any labels: the rule holds, and nothing but a ValueError naming the file comes out -----------------


def is_index(label: str) -> bool:
    return label.isascii() and label.isdigit()


def reads_as_number(label: str) -> bool:
    """What Python takes for a number, found without the code under test."""
    if not label.isascii():
        return False  # int() and float() take other scripts' digits; the rule is about ASCII
    for parse in (float, int, lambda text: int(text, 0)):
        try:
            parse(label)
        except ValueError:
            continue
        return True
    return False


numbers = st.one_of(
    st.integers(min_value=0, max_value=10**25).map(str),
    st.integers(max_value=-1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: f"{x:.2f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: f"{x:e}"),
    st.sampled_from(["+3", "0x10", "1_000", "0o7", "1e3", ".5", "-0"]),
)
names = st.one_of(
    st.sampled_from(["walk", "run", "jump", "3d", "0 1", "١", "e5"]),
    st.text(st.characters(codec="utf-8", exclude_characters=',"\r\n'), max_size=8),
)
padding = st.sampled_from(["", " ", "\t", "  "])
label = st.tuples(padding, st.one_of(numbers, names), padding).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.one_of(
        st.lists(st.integers(min_value=0, max_value=2**64).map(str), max_size=6),
        st.lists(names, max_size=6),
        st.lists(label, max_size=6),
    )
)
def test_labels_read_by_the_rule_or_a_value_error_naming_the_file(tmp_path: Path, labels: list[str]) -> None:
    path = write(tmp_path, labels)
    stripped = [text.strip() for text in labels]
    as_indices = all(is_index(text) and int(text) <= INT64_MAX for text in stripped)
    as_names = all(text and not is_index(text) and not reads_as_number(text) for text in stripped)
    try:
        read = read_manifest(path)
    except ValueError as e:
        assert str(e).startswith(f"{path}:"), str(e)
        assert not as_indices and not as_names, str(e)
        return
    got = [r.label for r in read.rows]
    if as_indices:
        assert read.classes is None and got == [int(text) for text in stripped]
    else:
        assert as_names, f"read {stripped} as {read.classes}"
        assert read.classes == tuple(sorted(set(stripped)))
        assert got == [read.classes.index(text) for text in stripped]
    assert all(0 <= number <= INT64_MAX for number in got)


# The job on fuzzed manifests -----------------------------------------------------------------------

# How a row may name a video of the folder the `fuzz_folder` fixture makes, and what it names:
# the file it resolves to, or None where it cannot be read.
SPELLINGS = {
    "v0.mp4": "v0.mp4",
    "./v1.mp4": "v1.mp4",
    "sub/../v2.mp4": "v2.mp4",
    "alias.mp4": "v0.mp4",  # a symbolic link to v0.mp4
    '"a, b.mp4"': "a, b.mp4",  # quoted: a comma in the name
    "with space.mp4": "with space.mp4",
    "missing.mp4": None,
    "loop.mp4": None,  # loop.mp4 -> loop2.mp4 -> loop.mp4
}
INTEGERS = ["0", "1", " 2 ", "007"]
NAMES = ["cat", "dog", "ünï code"]
BAD_LABELS = ["-1", "1.0", "1e3", "99999999999999999999999", ""]


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from rlt.samples import make_samples

    folder = tmp_path_factory.mktemp("fuzz")
    make_samples(folder, num_videos=3, num_frames=8, height=32, width=32, seed=5)
    for k, made in enumerate(sorted(folder.glob("sample_*.mp4"))):
        made.rename(folder / f"v{k}.mp4")
    shutil.copy(folder / "v1.mp4", folder / "a, b.mp4")
    shutil.copy(folder / "v2.mp4", folder / "with space.mp4")
    (folder / "sub").mkdir()
    (folder / "alias.mp4").symlink_to("v0.mp4")
    (folder / "loop.mp4").symlink_to("loop2.mp4")
    (folder / "loop2.mp4").symlink_to("loop.mp4")
    return folder


def _label_value(label: str) -> int | str:
    label = label.strip()
    return int(label) if label.isdigit() else label


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    paths=st.lists(st.sampled_from(sorted(SPELLINGS)), min_size=1, max_size=5, unique=True),
    data=st.data(),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    blank_lines=st.booleans(),
)
def test_the_job_on_a_fuzzed_manifest_makes_the_right_dataset_or_says_what_is_wrong(
    fuzz_folder: Path, paths: list[str], data: st.DataObject, bom: bool, newline: str, blank_lines: bool
) -> None:
    """A clear error naming the manifest, or the dataset the rows ask for: never a traceback, and
    never a dataset that differs from the manifest (two names for one file, a wrong label)."""
    import tempfile

    from typer.testing import CliRunner

    from rlt.cli import app
    from rlt.dataset import open_dataset

    # Labels of one kind mostly, and now and then a slip: a bad label or one of the other kind.
    kind = data.draw(st.sampled_from([INTEGERS, NAMES]))
    labels = [data.draw(st.sampled_from(kind)) for _ in paths]
    if data.draw(st.integers(0, 3)) == 0:
        labels[data.draw(st.integers(0, len(labels) - 1))] = data.draw(st.sampled_from(BAD_LABELS + INTEGERS + NAMES))
    rows = list(zip(paths, labels, strict=True))
    work = Path(tempfile.mkdtemp(dir=fuzz_folder.parent))
    manifest = fuzz_folder / f"manifest-{work.name}.csv"
    lines = ["path,label", *(f"{path},{label}" for path, label in rows)]
    if blank_lines:
        lines.insert(1, "")
    manifest.write_bytes(("\ufeff" if bom else "").encode() + (newline.join(lines) + newline).encode())
    result = CliRunner().invoke(app, ["tokenize", str(manifest), str(work / "out"), "--workers", "1"])
    flat = re.sub(r"\s", "", result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output

    values = [_label_value(label) for _, label in rows]
    kinds = {type(v) for v in values}
    files = [SPELLINGS[path] for path, _ in rows]
    readable = [f for f in files if f is not None]
    if any(label in BAD_LABELS for _, label in rows) or len(kinds) > 1:
        event("a label error")
        assert result.exit_code == 2 and "error:" in result.output, result.output
        assert re.search(re.escape(re.sub(r"\s", "", str(manifest))) + r":\d+:", flat), result.output  # file:line
        return
    if len(set(readable)) < len(readable):
        event("two names for one file")
        assert result.exit_code == 2 and "same file" in result.output, result.output
        return
    unreadable = {path.strip('"') for path, _ in rows if SPELLINGS[path] is None}
    event("a dataset, with failed videos" if unreadable else "a dataset")
    assert result.exit_code == (3 if unreadable else 0), result.output
    failed = [json.loads(line)["video"] for line in (work / "out" / "errors.jsonl").read_text().splitlines()]
    assert sorted(failed) == sorted(unreadable)
    classes = sorted({str(v) for v in values}) if kinds == {str} else None
    expected = {
        path.strip('"'): (classes.index(str(v)) if classes else v) for (path, _), v in zip(rows, values, strict=True)
    }
    dataset = open_dataset(work / "out")
    found = {record.video: record.label for record in dataset}
    assert found == {video: label for video, label in expected.items() if video not in unreadable}
    assert dataset.index.classes == (tuple(classes) if classes else None)
