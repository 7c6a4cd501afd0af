"""Runs one `rlt-prep` command with a fault at every write, then again, and reports what happened.

Started by tests/test_faults.py as ``LD_PRELOAD=fault_shim.so python -m tests.fault_driver SPEC``.
This process imports the CLI once; every run is a ``fork`` of it (a fresh process that has only
imported), so a sweep of a few hundred runs takes a minute instead of a few hundred start-ups.

SPEC (JSON): ``root`` the folder the runs write under; ``args`` the command, with ``{root}`` in
place of its output folder; ``warm_up`` a command run first in this process; ``again`` the command
that repairs a run after a fault; ``kinds`` the faults (enospc, eio, kill); ``keep`` files whose
text the report holds; ``logs`` a folder for the runs' output; ``report`` where the results go. A
run's files are kept only until they are compared, so the sweep needs little disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

KINDS = {"count": 0, "enospc": 1, "eio": 2, "kill": 3}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    # Imported before any fork, so every child has it ready.
    from rlt.cli import app

    shim = ctypes.CDLL(None)  # the preloaded shim's symbols are global
    shim.rlt_fault_arm.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_int]
    shim.rlt_fault_count.restype = ctypes.c_long
    logs = Path(spec["logs"])
    logs.mkdir(parents=True, exist_ok=True)

    def run(args: list[str], root: Path, kind: str = "count", at: int = 0) -> dict[str, Any]:
        """Forks, arms the shim in the child and runs the command there; its status and output."""
        log = logs / "run.log"
        count_file = logs / "count"
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            shim.rlt_fault_arm(str(root).encode(), at, KINDS[kind])
            code: Any = 0
            try:
                app([a.replace("{root}", str(root)) for a in args], prog_name="rlt-prep")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # anything the CLI let through is the finding: report it, as a traceback
                import traceback

                traceback.print_exc()
                code = 99
            sys.stdout.flush()
            sys.stderr.flush()
            count_file.write_text(str(shim.rlt_fault_count()))
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        writes = int(count_file.read_text()) if count_file.exists() else None
        count_file.unlink(missing_ok=True)
        return {
            "status": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status),
            "output": log.read_text(errors="replace")[-3000:],
            "writes": writes,
        }

    work = Path(spec["root"])
    # A first run in this process, unwatched, so that each child starts warm: the lazy imports and
    # first calls of the decoders cost 20 times what the small job does. One thread for torch: a
    # child must not inherit an OpenMP pool that fork has emptied.
    import torch

    torch.set_num_threads(1)
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
        contextlib.suppress(SystemExit),
    ):
        app([a.replace("{root}", str(work / "warm-up")) for a in spec["warm_up"]], prog_name="rlt-prep")
    reference = work / "reference"
    first = run(spec["args"], reference)
    kept = {name: _text(reference / name) for name in spec.get("keep", [])}
    results: dict[str, Any] = {"reference": {**first, "files": _digests(reference), "kept": kept}, "runs": []}
    total = first["writes"] or 0
    for kind in spec["kinds"]:
        for at in range(1, total + 1):
            root = work / f"{kind}-{at}"
            faulted = run(spec["args"], root, kind, at)
            again = run(spec["again"], root)
            kept = {name: _text(root / name) for name in spec.get("keep", [])}
            results["runs"].append(
                {"kind": kind, "at": at, "faulted": faulted, "again": again, "files": _digests(root), "kept": kept}
            )
            shutil.rmtree(root, ignore_errors=True)
    Path(spec["report"]).write_text(json.dumps(results, indent=1))


def _text(path: Path) -> str | None:
    return path.read_text(errors="replace") if path.exists() else None


def _digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its relative path, with its SHA-256 (losses: see the test)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


if __name__ == "__main__":
    main(sys.argv[1])
