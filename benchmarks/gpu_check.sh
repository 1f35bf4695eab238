#!/usr/bin/env bash
# cytoagg's CUDA path run for real, in one short script (meant to take 5 to 8 minutes on one GPU and 16 cores;
# not yet run on a GPU).
#
#   bash benchmarks/gpu_check.sh            # from anywhere; on a machine with an NVIDIA GPU
#
# 1. Stops at once, exit 3 and "no CUDA device" on stderr, where torch sees no CUDA device (or, without torch,
#    nvidia-smi lists none). Nothing is installed or written then.
# 2. Installs cytoagg from this checkout (pyproject.toml, with its test extra) into a venv that keeps the
#    machine's own CUDA build of torch (torch>=2.4 is met, so pip leaves it). Without network access, put wheels
#    of what the machine lacks (snakemake and its dependencies, pycytominer, copairs) in .whl/ at the
#    repository root first (ignored by git): pip then installs from there alone. Without snakemake the demo
#    part is skipped (and the exit status is 1); the tests and benchmarks need only what a CUDA torch image has.
# 3. Runs the GPU-relevant tests with CUDA (device auto = cuda): tests/test_model.py, test_train.py,
#    test_precision.py (its CUDA tests run only here).
# 4. benchmarks/train.py on CUDA in bf16 and fp32, at the paper's settings (72 sets x 1,500 cells, D = 1,000,
#    the 2048-256-2048 network) and at the default demo's (72 x 100 cells, D = 48, 512-256-256): seconds per
#    step, sampling share, achieved TFLOP/s against a plain matmul of the same shapes in the same dtype on this
#    GPU; and benchmarks/embed.py likewise.
# 5. The default demo twice, train.device cpu and cuda (train.precision auto), and their tables side by side
#    (benchmarks/compare_runs.py; the baselines, which use no model, must be identical).
#
# Everything goes to $GPU_CHECK_DIR (default: gpu_check/ in the repository, ignored by git); the report, with
# the GPU's name and every table, is $GPU_CHECK_DIR/gpu_check.md. Exit status: 0 when every part ran and passed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${GPU_CHECK_DIR:-$REPO/gpu_check}
PY=${PYTHON:-python3}

no_cuda() {
    echo "gpu_check: no CUDA device: $1. This script checks cytoagg's CUDA path and needs a GPU; nothing was run." >&2
    exit 3
}

# 1. A CUDA device, before anything is installed.
if [ "${CUDA_VISIBLE_DEVICES-unset}" = "" ]; then
    no_cuda "CUDA_VISIBLE_DEVICES is set and empty"
fi
TORCH=$("$PY" -c 'import sys
try:
    import torch
except ImportError:
    sys.exit(2)
print("torch", torch.__version__)
sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null)
case $? in
    0) ;;
    1) no_cuda "$TORCH sees none" ;;
    *) nvidia-smi -L >/dev/null 2>&1 || no_cuda "no torch in $PY and no GPU listed by nvidia-smi" ;;
esac

mkdir -p "$WORK"
REPORT=$WORK/gpu_check.md
LOG=$WORK/gpu_check.log
: >"$LOG"
START=$SECONDS
STATUS=0
say() { echo "$@" | tee -a "$REPORT"; }
step() { echo "== $* ($(date +%T))" | tee -a "$LOG" >&2; }
section() { say; say "## $1"; say; say '```'; }
end_section() { say '```'; }

# 2. Install from this checkout, keeping the machine's CUDA torch: a venv that also sees the packages of the
# interpreter it is made from (a .pth file: --system-site-packages alone misses them when that is a venv itself).
step "installing cytoagg into $WORK/venv"
VPY=$WORK/venv/bin/python
PIP=("$VPY" -m pip)
if ! "$PY" -m venv --system-site-packages "$WORK/venv" >>"$LOG" 2>&1; then
    "$PY" -m venv --without-pip --system-site-packages "$WORK/venv" >>"$LOG" 2>&1 \
        || { echo "gpu_check: could not make a venv with $PY (see $LOG)" >&2; exit 4; }
    PIP=("$PY" -m pip --python "$VPY")
fi
"$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
    >"$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_gpu_check_parent.pth"
"${PIP[@]}" install -q --no-build-isolation --no-deps -e "$REPO" >>"$LOG" 2>&1 \
    || { echo "gpu_check: could not install cytoagg from $REPO (see $LOG)" >&2; exit 4; }
INSTALL=(install -q --no-build-isolation)
[ -d "$REPO/.whl" ] && INSTALL+=(--no-index --find-links "$REPO/.whl")
DEPS=installed
"${PIP[@]}" "${INSTALL[@]}" -e "$REPO[test]" >>"$LOG" 2>&1 || DEPS="NOT installed (no network, and no .whl/ with them?)"
"$VPY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || no_cuda "the venv's torch ($("$VPY" -c 'import torch; print(torch.__version__)')) sees none"
export PATH=$WORK/venv/bin:$PATH

{
    echo "# GPU check of cytoagg's CUDA path"
    echo
    echo "$(date -u +%Y-%m-%d), $(uname -n), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    "$VPY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; torch {torch.__version__}, CUDA {torch.version.cuda}')"
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
    nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
    echo "dependencies of pyproject.toml's test extra: $DEPS"
} >"$REPORT"

# 3. The GPU-relevant tests, with CUDA.
step "tests"
section "tests with CUDA (tests/test_model.py tests/test_train.py tests/test_precision.py)"
(cd "$REPO" && "$VPY" -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_train.py tests/test_precision.py 2>&1) \
    | tee -a "$LOG" | tail -15 | tee -a "$REPORT" || STATUS=1
end_section

# 4. Training step and embedding, bf16 and fp32, at the paper's and the default demo's settings.
bench() {  # title, script and its arguments
    local title=$1
    shift
    step "$title"
    section "$title"
    (cd "$REPO/benchmarks" && "$VPY" "$@" 2>>"$LOG") | tee -a "$REPORT" || STATUS=1
    end_section
}
CUDA_ARGS=(--device cuda --threads 4 --precision bf16 fp32)
DEMO_NET=(--features 48 --hidden 512 --out-dim 256 --cells-per-well 80)
bench "benchmarks/train.py, the paper's settings" train.py "${CUDA_ARGS[@]}" --reference-steps 0 --steps 20
bench "benchmarks/train.py, the default demo's settings" train.py "${CUDA_ARGS[@]}" --reference-steps 0 --steps 20 \
    --cells 100 "${DEMO_NET[@]}"
bench "benchmarks/embed.py, the paper's network, 384 wells x 1,000 cells" embed.py "${CUDA_ARGS[@]}" --cells-per-well 1000
bench "benchmarks/embed.py, the default demo's network" embed.py "${CUDA_ARGS[@]}" "${DEMO_NET[@]}"

# 5. The default demo on the CPU and on CUDA, and their tables.
demo() {  # name, device
    step "default demo, train.device $2"
    printf 'results: %s\ntrain:\n  device: %s\n' "$WORK/demo_$1" "$2" >"$WORK/demo_$1.yaml"
    local t0=$SECONDS
    (cd "$REPO" && "$VPY" -m snakemake --cores "$(nproc)" --configfile "$WORK/demo_$1.yaml" >"$WORK/demo_$1.log" 2>&1) \
        || { say "demo on $2 failed: see $WORK/demo_$1.log"; STATUS=1; }
    say "demo on $2: $((SECONDS - t0)) s (snakemake --cores $(nproc))"
}
section "the default demo, train.device cpu vs cuda (benchmarks/compare_runs.py)"
if "$VPY" -c "import snakemake" >/dev/null 2>&1; then
    demo cpu cpu
    demo cuda cuda
    (cd "$REPO" && "$VPY" benchmarks/compare_runs.py "$WORK/demo_cpu" "$WORK/demo_cuda" 2>>"$LOG") | tee -a "$REPORT" || STATUS=1
else
    say "skipped: snakemake is not installed (dependencies $DEPS)"
    STATUS=1
fi
end_section

say
say "total $((SECONDS - START)) s; exit status $STATUS"
exit $STATUS
