"""The parent that runs each section in its own process, the child that runs one, and the report of both."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu._context import FULL, QUICK, REPO, Context, Recorder, log, write_atomic, write_json
from benchmarks.gpu._sampling import UtilSampler, machine_info, nvdec_engines
from benchmarks.gpu._videos import section_videos
from benchmarks.gpu.decode import section_decode
from benchmarks.gpu.online import section_online
from benchmarks.gpu.rlt_train import section_rlt, section_train
from benchmarks.gpu.tokenize_job import section_tokenize

# The script each section's process runs again, with --run-section: it sets up the import path.
SCRIPT = REPO / "benchmarks" / "bench_gpu.py"
SECTIONS: dict[str, Callable[[Recorder, Context], None]] = {
    "decode": section_decode,
    "rlt": section_rlt,
    "train": section_train,
    "online": section_online,
    "tokenize": section_tokenize,
}
STEPS = {"videos": section_videos, **SECTIONS}  # "videos" first, when a chosen section needs them
NEEDS_VIDEOS = {"decode", "train", "online", "tokenize"}
NO_CUDA = (
    "error: bench_gpu needs a CUDA GPU (torch sees none); the CPU benchmarks are benchmarks/bench_decode.py, "
    "bench_rlt.py, bench_train.py, bench_loader.py, bench_tokenize.py and bench_stats.py "
    "(--allow-cpu runs this script on the CPU at --quick sizes, to test it)"
)


def run_child(args: argparse.Namespace, cuda: bool) -> int:
    """The section named by --run-section, in this process; its figures go to OUT/.sections/NAME.json."""
    name = args.run_section
    sizes = QUICK if args.quick or args.allow_cpu else FULL
    device = torch.device("cuda" if cuda else "cpu")
    ctx = Context(
        out=args.out,
        videos=args.videos or args.out / "videos" / f"{args.codec}_{sizes.frames}f",
        sizes=sizes,
        device=device,
        dali="dali" if cuda else "dali-cpu",
        preset=args.preset or ("vit_b" if cuda else "tiny"),
        codec=args.codec,
        nvdec_engines=args.nvdec_engines or (nvdec_engines(torch.cuda.get_device_name(0)) if cuda else None),
        sampler=UtilSampler(cuda and name in ("decode", "online")),
    )
    rec = Recorder(args.out / ".sections" / f"{name}.json", args.budget)
    rec.data.update(sizes="full" if sizes is FULL else "quick", utilisation_source=ctx.sampler.source)
    try:
        STEPS[name](rec, ctx)
        rec.data["status"] = "partial" if rec.data.get("truncated") else "ok"
    except BaseException as e:  # recorded, then the parent goes on with the next section
        rec.data.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        log(f"{name} failed: {type(e).__name__}: {e}")
    finally:
        ctx.sampler.close()
        rec.save()
    return 0 if rec.data["status"] != "error" else 1


_running: subprocess.Popen[str] | None = None  # the section now running, for the SIGTERM handler


def run_section_process(name: str, args: argparse.Namespace, budget: float, limit: float) -> dict[str, Any]:
    """Runs one section in a child process (soft ``budget``, killed at ``limit`` s); returns what it recorded."""
    global _running
    path = args.out / ".sections" / f"{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(SCRIPT), *args.argv, "--budget", str(budget), "--run-section", name]
    started = time.monotonic()
    # Its own process group, so a hung section goes with everything it started (Ray, pools); and it
    # dies with this process, so a run killed at its time limit leaves nothing holding the GPU.
    child = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True, preexec_fn=_die_with_parent
    )
    _running = child
    tail: list[str] = []

    def tee() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            tail.append(line)
            del tail[:-40]

    reader = threading.Thread(target=tee, daemon=True)
    reader.start()
    try:
        code, killed = child.wait(timeout=limit), None
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        code, killed = child.wait(), f"was killed after {limit:.0f} s (soft budget {budget:.0f} s)"
    _running = None
    reader.join(timeout=10)
    result = json.loads(path.read_text()) if path.is_file() else {"figures": {}, "goals": [], "notes": []}
    result["wall_s"] = round(time.monotonic() - started, 1)
    if killed or (code != 0 and result.get("status") != "error"):
        how = killed or (f"died of signal {-code}" if code < 0 else f"exited with status {code}")
        result.update(status="error", error=f"the section's process {how}; its figures up to then are kept")
        result["stderr_tail"] = "".join(tail)[-4000:]
    return result


def _die_with_parent() -> None:
    import ctypes

    with suppress(OSError, AttributeError):  # Linux only; elsewhere the SIGTERM handler still cleans up
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _on_sigterm(signum: int, frame: Any) -> None:
    if _running is not None:
        with suppress(ProcessLookupError):
            os.killpg(_running.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    gpu = machine.get("gpu", {})
    facts = {**{k: v for k, v in machine.items() if k not in ("gpu", "versions")}, **gpu, **machine["versions"]}
    lines = [
        f"# bench_gpu: {gpu.get('name', 'CPU only')} on {machine['hostname']}",
        f"Started {report['started']}: `{' '.join(['bench_gpu.py', *report['argv']])}`. {report.get('warning', '')}",
        "| machine | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in facts.items()),
        "## Goals",
        "| section | figure | value | goal | met |\n| --- | --- | --- | --- | --- |",
    ]
    for name, section in report["sections"].items():
        for g in section.get("goals", []):
            met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
            lines[-1] += f"\n| {name} | {g['figure']} | {g['value']} | {g['goal']} | {met} |"
    for name, section in report["sections"].items():
        earlier = (
            "" if section.get("run_started") == report["started"] else f", from the run of {section.get('run_started')}"
        )
        lines.append(f"## {name}: {section.get('status')} ({section.get('wall_s', 0)} s{earlier})")
        if section.get("error"):
            detail = (section.get("traceback") or section.get("stderr_tail") or "")[-2000:]
            lines.append(f"```\n{section['error']}\n{detail}\n```")
        lines += ["\n".join(f"- {note}" for note in section.get("notes", []))]
        rows = [f"| {k} | {v} |" for k, v in _flatten(section.get("figures", {}))]
        lines += ["| figure | value |\n| --- | --- |\n" + "\n".join(rows)] if rows else []
    return "\n\n".join(line for line in lines if line) + "\n"


def _flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def parse_args(argv: list[str], description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_gpu.json, bench_gpu.md, videos")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every section")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument("--budget", type=float, help="seconds per section (default 300, 120 with --quick)")
    parser.add_argument(
        "--total-budget", type=float, help="seconds for the whole run: later sections get less, or are skipped"
    )
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU at --quick sizes, to test the script")
    parser.add_argument("--preset", help="model of rlt/train/online (default vit_b; tiny with --allow-cpu)")
    parser.add_argument("--codec", choices=("h264", "mjpeg"), help="test videos (default h264; mjpeg with --allow-cpu)")
    parser.add_argument("--videos", type=Path, help="folder of the test videos (default OUT/videos/CODEC_NNf)")
    parser.add_argument("--nvdec-engines", type=int, help="NVDEC engines of the GPU (default: from its name)")
    parser.add_argument("--run-section", choices=tuple(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.codec = args.codec or ("mjpeg" if args.allow_cpu else "h264")
    args.budget = args.budget or (120.0 if args.quick or args.allow_cpu else 300.0)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str], description: str | None = None) -> int:
    """bench_gpu.py's command line (``description`` is its help); the exit status."""
    args = parse_args(argv, description)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.run_section:
        return run_child(args, cuda)

    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "bench_gpu.json"
    report: dict[str, Any] = {"schema": 1, "sections": {}}
    if report_path.is_file():  # sections of an earlier run that this one does not redo are kept
        with suppress(json.JSONDecodeError):
            report["sections"] = json.loads(report_path.read_text()).get("sections", {})
    report.update(started=time.strftime("%Y-%m-%d %H:%M:%S %z"), argv=args.argv, machine=machine_info(cuda))
    if not cuda:
        report["warning"] = "--allow-cpu: every section ran on the CPU; these figures say nothing about a GPU"
    machine = report["machine"]
    log(f"{machine.get('gpu', {}).get('name', 'CPU')} on {machine['hostname']}, {machine['cpu_count']} CPUs; "
        f"sections {','.join(args.sections)}, budget {args.budget:.0f} s each")  # fmt: skip

    def save() -> None:
        write_json(report_path, report)
        write_atomic(args.out / "bench_gpu.md", render_markdown(report))

    signal.signal(signal.SIGTERM, _on_sigterm)
    save()
    deadline = time.monotonic() + (args.total_budget or math.inf)
    steps = (["videos"] if NEEDS_VIDEOS & set(args.sections) else []) + args.sections
    for name in steps:
        left = deadline - time.monotonic() - 15  # kept for writing the report
        if left < 30:
            note = f"not started: --total-budget {args.total_budget:.0f} s had {max(left, 0):.0f} s left"
            report["sections"][name] = {"status": "skipped", "notes": [note], "run_started": report["started"]}
            log(f"== {name}: {note}")
            save()
            continue
        budget = min(args.budget, 0.7 * left)
        log(f"== {name} (budget {budget:.0f} s)")
        result = run_section_process(name, args, budget, limit=min(budget + max(60.0, budget / 2), left))
        result["run_started"] = report["started"]
        report["sections"][name] = result
        save()
        error = f": {result['error']}" if result.get("error") else ""
        log(f"== {name}: {result.get('status')} in {result['wall_s']} s{error}")
    log(f"wrote {report_path} and {args.out / 'bench_gpu.md'}")
    for name in steps:
        for g in report["sections"][name].get("goals", []):
            state = {True: "met ", False: "MISS", None: "n/a "}[g["met"]]
            log(f"  {state} {g['figure']}: {g['value']} (goal {g['goal']})")
    failed = [n for n in steps if report["sections"][n].get("status") == "error"]
    if failed:
        log(f"failed sections: {', '.join(failed)} (errors in the report)")
    return 1 if failed else 0
