#!/usr/bin/env bash
# Nsight Systems capture of a pydsv4 command, then its summaries: GPU kernels (each kernel of a replayed CUDA graph
# counted on its own), NVTX ranges (every C entry opens one named after itself, so they map 1:1 onto the API) and
# CUDA API calls.
#
#   tools/profile.sh [-o NAME] [COMMAND ...]
#
# COMMAND defaults to `python3 -m pydsv4.bench ops --tokens 1,64 --no-peer` (our kernels, without torch's peers).
# The report is NAME.nsys-rep (default profile-<date>-<time>), the summaries are printed and saved as NAME.txt. nsys
# is $NSYS, else the one on PATH.
# DSV4_PDL=0 in the environment launches kernels without programmatic overlap, so each one's time is its own.
set -euo pipefail

name="profile-$(date +%Y%m%d-%H%M%S)"
if [ "${1:-}" = "-o" ]; then
    [ $# -ge 2 ] || { echo "profile.sh: -o needs a report name" >&2; exit 2; }
    name=$2
    shift 2
fi
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || set -- python3 -m pydsv4.bench ops --tokens 1,64 --no-peer

nsys=${NSYS:-$(command -v nsys || true)}
if [ -z "$nsys" ] || [ ! -x "$nsys" ]; then
    echo "profile.sh: Nsight Systems not found: put nsys on PATH or set NSYS=/path/to/nsys" >&2
    exit 2
fi

"$nsys" profile --trace=cuda,nvtx --cuda-graph-trace=node --force-overwrite=true --output="$name" "$@"
"$nsys" stats --force-export=true --report cuda_gpu_kern_sum,nvtx_sum,cuda_api_sum --format table \
    "$name.nsys-rep" | tee "$name.txt"
echo "profile.sh: report $name.nsys-rep, summaries $name.txt"
