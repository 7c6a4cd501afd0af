"""Benchmarks, one script per question; a package only so that bench_gpu.py can import `benchmarks.gpu`."""
