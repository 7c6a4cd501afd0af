"""The code of benchmarks/bench_gpu.py, whose docstring says what each section measures.

`_runner` runs each section in its own process and writes the report; `_context` is what a section
sees (sizes, device, the `Recorder`); `_sampling` the GPU's utilisation and the machine; `_videos`
the test videos; `decode`, `rlt_train`, `online` and `tokenize_job` the sections.
"""

from benchmarks.gpu._runner import main

__all__ = ["main"]
