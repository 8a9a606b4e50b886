#!/usr/bin/env bash
# Issue 17's GPU checks in one call, for a session that is lent a GPU (15 minutes of device time in
# all, at most 10 per command). From the repository root on the GPU machine:
#
#     bash benchmarks/gpu_session.sh                         # writes everything under $OUT
#
# Steps, each under its own `timeout` (8 minutes 25 s in all at most; typically less):
#   1. env          nvidia-smi, python/torch/triton versions, the source-tree import check      15 s
#   2. pytest       the Triton kernels against the reference compiled on the GPU (tests/kernels),
#                   CUDA graphs, the torch backend's CUDA path, no host syncs in the step loop   160 s
#   3. kernels      bench_kernels --mode step: reference / in place / Triton, fp32 and bf16
#                   denoised, GB/s against the measured copy bandwidth (CUDA events)            60 s
#      churn        the churn (noise) alone, in place vs Triton: the reference draws its noise
#                   on the host, seconds per call at CONUS size, so it is left out here           30 s
#   4. sampler      bench_cuda: 30 members, 18 Heun steps, one 128 px tile and the peer's 512^2,
#                   plain PyTorch baseline vs bf16 + compile + graphs + Triton, vs the peer     240 s
#   5. summary      a short table (printed last, so the tool's output tail shows it)
# Files under $OUT (the tool returns at most 8): env.txt pytest.txt bench_kernels.jsonl
# bench_cuda.jsonl session.log steps.txt summary.txt.
#
# No install: the machine's python3 has torch and triton but not precipfast. Run from the checkout,
# `import precipfast` finds ./precipfast, whose __init__ lists the checkout root on the package path, so
# precipfast.kernels, .runtime, .benchmarks, ... resolve to the top-level folders (pyproject's package-dir
# mapping); PYTHONPATH is set too, for anything started from another directory.
#
# Dry run on a CPU machine (tiny sizes, a few seconds each; every step still runs):
#     OUT=/tmp/gpu-smoke GPU_SESSION_SMOKE=1 PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh
set -u
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
PY=${PYTHON:-python3}
SMOKE=${GPU_SESSION_SMOKE:-0}
mkdir -p "$OUT"
export PY PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for f in env.txt pytest.txt bench_kernels.jsonl bench_cuda.jsonl session.log steps.txt; do : >"$OUT/$f"; done

# step NAME LIMIT_S STDOUT_FILE STDERR_FILE CMD...: CMD under `timeout`, its output appended to the two
# files, its exit status and wall time to steps.txt.
step() {
    local name=$1 limit=$2 out=$3 err=$4 t0 rc
    shift 4
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$out" 2>>"$err"
    rc=$?
    echo "$name: exit $rc in $(($(date +%s) - t0)) s (limit $limit s)$([ $rc -eq 124 ] && echo ', TIMED OUT')" \
        >>"$OUT/steps.txt"
}

env_info() {
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse --short=12 HEAD 2>/dev/null || echo "no git"
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not importable")
import precipfast.kernels.heun_residual as hr, precipfast.benchmarks.bench_cuda as bc
print("precipfast from", hr.__file__, "and", bc.__file__)
EOF
}

if [ "$SMOKE" = 1 ]; then
    TESTS=(tests/kernels/test_heun_residual.py -k "registry or launchers")
    KERNELS=(--sizes tiles_30x128 --ops step --repeat 1 --threads 1)
    CHURN=(--sizes tiles_30x128 --impls inplace --repeat 1 --threads 1)
    SAMPLER=(--members 2 --domains 32 40x56 --tile 32 --overlap 8 --steps 2 --repeat 1 --threads 1)
else
    TESTS=(tests/kernels tests/runtime/test_cuda_graphs.py tests/runtime/test_noise.py::test_cuda_matches_cpu)
    KERNELS=(--ops step finish --repeat 20)
    CHURN=(--impls inplace triton --repeat 10)
    SAMPLER=(--members 30 --domains 128 512 --steps 18 --repeat 3)
fi

step env 15 "$OUT/env.txt" "$OUT/env.txt" bash -c "$(declare -f env_info); env_info"
step pytest 160 "$OUT/pytest.txt" "$OUT/pytest.txt" "$PY" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
step kernels 60 "$OUT/bench_kernels.jsonl" "$OUT/session.log" \
    "$PY" -m precipfast.benchmarks.bench_kernels --mode step "${KERNELS[@]}"
step churn 30 "$OUT/bench_kernels.jsonl" "$OUT/session.log" \
    "$PY" -m precipfast.benchmarks.bench_kernels --mode step --ops churn "${CHURN[@]}"
step sampler 240 "$OUT/bench_cuda.jsonl" "$OUT/session.log" "$PY" -m precipfast.benchmarks.bench_cuda "${SAMPLER[@]}"
cat "$OUT/steps.txt"
"$PY" -m precipfast.benchmarks.session_summary "$OUT"
