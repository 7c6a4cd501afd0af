#!/usr/bin/env bash
# The steps of a session on the lent GPU box (no package index; see wheels.txt for the staging), each
# one `run` call from the project root, logs and figures under $OUT:
#
#   bash benchmarks/gpu/box.sh copy       # calls 1..N, one staged .gpu/cK folder carried per call
#   bash benchmarks/gpu/box.sh install    # with the last folder: reassemble, install into /tmp/site, versions
#   bash benchmarks/gpu/box.sh cuda       # the needs_cuda tests, FAIL_WITHOUT_CUDA=1
#   BENCH_BUDGET=S bash benchmarks/gpu/box.sh bench   # benchmarks/bench_gpu.py in S seconds (default 540)
#   bash benchmarks/gpu/box.sh suite      # the rest of the suite (pytest-xdist when staged)
#   TESTS="tests/a.py::t ..." bash benchmarks/gpu/box.sh tests   # just these tests
#   bash benchmarks/gpu/box.sh remote     # bench_remote_loader.py on rclone's S3 API, all cores (issue 14)
#
# Several steps may be given in one call: `box.sh install cuda`.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/w
export PYTHONPATH=/tmp/site:$PWD FAIL_WITHOUT_CUDA=1
export PATH=/tmp/site/bin:$PATH
cp .gpu/c*/* /tmp/w/ 2>/dev/null || true

install() {
  (cd /tmp/w && for p in $(ls ./*.part00 2>/dev/null); do b=${p%.part00}; cat "$b".part?? > "$b" && rm "$b".part??; done)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl 2>&1 | tail -5
  {
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 - <<'PY'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version(), "device", torch.cuda.get_device_name(0))
for name in ("nvidia.dali", "decord", "ray", "zarr", "av", "pyarrow", "numpy", "pytest"):
    try:
        mod = __import__(name, fromlist=["_"])
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001 - a report of what imports
        print(name, "FAILED", exc)
PY
    nproc; free -g | head -2
  } 2>&1 | tee "$OUT/versions.txt"
}

cuda() {
  python3 -m pytest -m needs_cuda -p no:cacheprovider -q --timeout 300 --junitxml "$OUT/cuda_tests.xml" \
    2>&1 | tee "$OUT/cuda_tests.log" | tail -60
}

bench() {
  python3 benchmarks/bench_gpu.py --out /tmp/bench_gpu --total-budget "${1:-540}" 2>&1 | tee "$OUT/bench_gpu.log" | tail -80
  cp /tmp/bench_gpu/*.json /tmp/bench_gpu/*.md /tmp/bench_gpu/*.txt "$OUT/" 2>/dev/null
}

suite() {
  local xdist=()
  python3 -c "import xdist" 2>/dev/null && xdist=(-n 8 --dist loadfile)
  python3 -m pytest -m "not needs_cuda" -p no:cacheprovider -q --timeout 300 "${xdist[@]}" \
    --junitxml "$OUT/suite_tests.xml" 2>&1 | tee "$OUT/suite_tests.log" | tail -60
}

tests() {
  # shellcheck disable=SC2086 - TESTS is a list of test ids
  python3 -m pytest -p no:cacheprovider -q --timeout 300 -n 8 --dist loadfile $TESTS \
    --junitxml "$OUT/some_tests.xml" 2>&1 | tee "$OUT/some_tests.log" | tail -40
}

remote() {
  python3 benchmarks/bench_remote_loader.py --server rclone --json "$OUT/remote_loader_rclone_$(nproc)core.json" \
    2>&1 | tee "$OUT/remote_loader.log" | tail -30
}

for step in "$@"; do
  case "$step" in
    copy) ls /tmp/w | wc -l ;;
    install) install ;;
    cuda) cuda ;;
    bench) bench "${BENCH_BUDGET:-540}" ;;
    suite) suite ;;
    tests) tests ;;
    remote) remote ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
