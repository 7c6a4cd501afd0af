"""`rlt-prep stats`: whether RLT pays on a dataset, and with which threshold."""

from rlt.stats._render import print_report, print_sweep, write_html
from rlt.stats._report import SCHEMA_VERSION, dataset_stats, vit_flops
from rlt.stats._sweep import threshold_sweep

__all__ = [
    "SCHEMA_VERSION",
    "dataset_stats",
    "print_report",
    "print_sweep",
    "threshold_sweep",
    "vit_flops",
    "write_html",
]
