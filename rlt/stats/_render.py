"""The stats report as a terminal table (rich) and as one self-contained HTML page (matplotlib)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_report(report: dict[str, Any], console: Console) -> None:
    tokens, padding, disk, compute = report["tokens"], report["padding"], report["disk"], report["compute"]
    table = Table("dataset", report["dataset"], title="rlt-prep stats")
    table.add_row("videos", f"{report['videos']} ({report['failed']} failed)")
    table.add_row("clips", str(report["clips"]))
    table.add_row("tokens kept", f"{tokens['kept']} of {tokens['dense']} ({100 * tokens['kept_ratio']:.1f}%)")
    table.add_row(
        "kept, padding apart",
        f"{padding['real_kept']} of {padding['real_dense']} ({100 * padding['real_kept_ratio']:.1f}%); "
        f"{padding['padded_tubelets']} padded tubelets in {padding['clips_with_padding']} clips",
    )
    percentiles = tokens["per_clip_kept_ratio_percentiles"]
    table.add_row("kept per clip", "  ".join(f"p{p} {100 * v:.0f}%" for p, v in percentiles.items()))
    table.add_row("run lengths", "  ".join(f"{k}:{v}" for k, v in report["run_lengths"].items()))
    table.add_row("keep rate by tubelet", "  ".join(f"{100 * r:.0f}%" for r in report["keep_rate_per_tubelet"]))
    table.add_row(
        "on disk",
        f"{disk['bytes_per_clip'] / 1e3:.0f} kB per clip, {disk['compression']:.1f}x smaller than dense uint8 clips",
    )
    table.add_row(
        "predicted speed-up",
        f"{compute['predicted_speedup']:.2f}x for {compute['model']} "
        f"({compute['dense_gflops']:.0f} -> {compute['rlt_gflops']:.0f} GFLOPs)",
    )
    console.print(table)
    if report["per_class"]:
        classes = Table("class", "clips", "kept %", title="by label")
        for name, row in report["per_class"].items():
            classes.add_row(name, str(row["clips"]), f"{100 * row['kept_ratio']:.1f}")
        console.print(classes)


def print_sweep(report: dict[str, Any], console: Console) -> None:
    table = Table("threshold", "token reduction", title=f"RLT on {report['clips']} clips of {report['videos']} videos")
    for threshold, value in report["reduction"].items():
        table.add_row(threshold, f"{100 * value:.1f}%")
    console.print(table)
    if "target_reduction" in report:
        found = report["threshold_for_target"]
        target = f"{100 * report['target_reduction']:.0f}%"
        console.print(
            f"threshold for {target} fewer tokens: {found:.3f}" if found is not None else f"{target} is not reachable"
        )


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """Writes the report as one HTML file with its plots embedded as PNG images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(draw: Any, title: str) -> str:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        draw(ax)
        ax.set_title(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        data = base64.b64encode(buffer.getvalue()).decode()
        return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></figure>'

    tokens, padding, disk, compute = report["tokens"], report["padding"], report["disk"], report["compute"]
    lengths = report["run_lengths"]
    percentiles = tokens["per_clip_kept_ratio_percentiles"]

    def run_lengths(ax: Any) -> None:
        ax.bar(list(lengths), list(lengths.values()), color="#4c72b0")
        ax.set_xlabel("run length (tubelets)")
        ax.set_ylabel("kept tokens")

    def keep_by_tubelet(ax: Any) -> None:
        rates = report["keep_rate_per_tubelet"]
        ax.bar(range(len(rates)), [100 * r for r in rates], color="#55a868")
        ax.set_xlabel("tubelet index")
        ax.set_ylabel("% kept (padding apart)")

    def kept_per_clip(ax: Any) -> None:
        ax.plot([int(p) for p in percentiles], [100 * v for v in percentiles.values()], "o-")
        ax.set_xlabel("percentile of clips")
        ax.set_ylabel("% tokens kept")

    def kept_by_class(ax: Any) -> None:
        ax.barh(list(report["per_class"]), [100 * r["kept_ratio"] for r in report["per_class"].values()])
        ax.set_xlabel("% tokens kept")

    plots = [
        figure(run_lengths, "Run lengths of kept tokens"),
        figure(keep_by_tubelet, "Keep rate by tubelet"),
        figure(kept_per_clip, "Tokens kept per clip"),
    ]
    if report["per_class"]:
        plots.append(figure(kept_by_class, "Tokens kept by class"))
    rows = [
        ("Videos", f"{report['videos']} ({report['failed']} failed)"),
        ("Clips", report["clips"]),
        ("Tokens kept", f"{tokens['kept']:,} of {tokens['dense']:,} ({100 * tokens['kept_ratio']:.1f}%)"),
        (
            "Kept, padding apart",
            f"{100 * padding['real_kept_ratio']:.1f}% ({padding['padded_tubelets']} padded tubelets)",
        ),
        ("On disk", f"{disk['bytes_per_clip'] / 1e3:.0f} kB per clip ({disk['compression']:.1f}x smaller than dense)"),
        ("Predicted speed-up", f"{compute['predicted_speedup']:.2f}x for {compute['model']}"),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rlt-prep stats: {html.escape(report["dataset"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }} th, td {{ text-align: left; padding: .3em 1em; }}
th {{ color: #555; font-weight: 600; }} tr:nth-child(odd) {{ background: #f4f6f8; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }} figure {{ margin: 0; }}
</style></head>
<body>
<h1>Run-length tokens: {html.escape(report["dataset"])}</h1>
<table>{table}</table>
<div class="plots">{"".join(plots)}</div>
<script>
// Marks the page once every plot has decoded, for headless checks.
window.addEventListener("load", () => {{
  const images = [...document.images];
  document.body.dataset.plotsLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length + "/" + images.length;
}});
</script>
</body></html>
"""
    path = Path(path)
    path.write_text(page)
    return path
