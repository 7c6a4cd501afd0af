"""The README's promises about setup: its commands, and the CI that runs them."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from rlt.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_quick_start_is_two_commands() -> None:
    commands = _quick_start()
    assert len(commands) == 2
    assert "rlt-prep demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start()[1] in ci


def test_every_command_in_the_readme_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`rlt-prep (\w+)", readme))
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in documented:
        assert command in result.output, command


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--videos", "2", "--backend", "decord"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "videos" / "manifest.csv").exists()
    kept = re.search(r"(\d+) of (\d+) tokens kept", result.output)
    assert kept, result.output
    # Static backgrounds: RLT keeps well under half of the tokens, but more than tubelet 0 alone.
    n, dense = int(kept.group(1)), int(kept.group(2))
    assert dense == 2 * 2 * 8 * 14 * 14
    assert dense / 8 < n < dense / 2
