#!/usr/bin/env bash
# Check mmmo on a CUDA box that has torch but no network, from wheels made by `make gpu-wheels` elsewhere:
#
#   bash scripts/gpu_check.sh [--check-wheels | --install-only] WHEELS_DIR
#
# Full run: fails at once, with one line, unless the box's Python sees a CUDA device; then installs mmmo and its
# dependencies offline into a venv that reuses the box's torch, and runs (a) the tests marked `cuda`, (b) a short
# bf16 demo search on cuda with its candidates scored per second, (c) merge time per candidate against a bandwidth
# pass (benchmarks/merge_speed.py on a random model of SmolLM2-135M's shape). Every step runs even if one before
# it failed; the exit status is 1 if any did. Logs and summary.txt go to $OUT if set, else ./gpu-check-results.
#   --check-wheels  only resolve the install offline (pip --dry-run) in a throw-away venv: no CUDA needed
#   --install-only  only create the venv and install into it: no CUDA needed
# Environment: GPU_CHECK_PYTHON (the Python with torch; default python3), GPU_CHECK_VENV (default ./.gpu-venv,
# reused while the wheels, constraints and Python are unchanged), GPU_CHECK_WORK (demo, models and runs; default
# $TMPDIR/mmmo-gpu-check, reused across runs), GPU_CHECK_CONSTRAINTS (default ./constraints.txt), and
# GPU_CHECK_DEVICE=cpu: a rehearsal of every step on the CPU (a smaller merge-speed model), for working on this
# script on a machine without a GPU; it says nothing about CUDA.
set -euo pipefail

die() { echo "gpu_check: $*" >&2; exit 1; }
usage="usage: bash scripts/gpu_check.sh [--check-wheels | --install-only] WHEELS_DIR"

mode=full
case "${1:-}" in
    --check-wheels) mode=check; shift ;;
    --install-only) mode=install; shift ;;
    -h | --help) echo "$usage"; exit 0 ;;
esac
[[ $# -eq 1 ]] || die "$usage"
[[ -d $1 ]] || die "no wheels folder $1 (make it with \`make gpu-wheels GPU_PYTHON=X.Y\` on a networked machine)"
WHEELS=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${GPU_CHECK_PYTHON:-python3}
CONSTRAINTS=${GPU_CHECK_CONSTRAINTS:-$REPO/constraints.txt}
VENV=${GPU_CHECK_VENV:-$REPO/.gpu-venv}
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/mmmo-gpu-check}
RESULTS=${OUT:-$REPO/gpu-check-results}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
HELPERS=$REPO/scripts/gpu_check_helpers.py
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
SUMMARY=$RESULTS/summary.txt
INSTALL_LOG=$RESULTS/install.log

command -v "$PY" >/dev/null || die "no $PY on PATH: set GPU_CHECK_PYTHON to the Python that holds the box's torch"
shopt -s nullglob
mmmo_wheels=("$WHEELS"/mmmo-*.whl)
shopt -u nullglob
[[ ${#mmmo_wheels[@]} -eq 1 ]] ||
    die "$WHEELS holds ${#mmmo_wheels[@]} mmmo wheels instead of one: remake it with make gpu-wheels"
manifest() { sed -n "s/^$1: //p" "$WHEELS/MANIFEST.txt" 2>/dev/null | head -1; }
py_version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
wheels_python=$(manifest python)
[[ -z $wheels_python || $wheels_python == "$py_version" ]] ||
    die "$WHEELS holds wheels for Python $wheels_python but $PY is Python $py_version: remake it with make gpu-wheels GPU_PYTHON=$py_version"
extras=$(manifest extras)
extras=${extras:-dev}

# Before anything is installed: without a GPU the rest would only be a slow CPU run.
if [[ $mode == full && $DEVICE == cpu ]]; then
    gpu="none: REHEARSAL on the CPU (GPU_CHECK_DEVICE=cpu), which says nothing about CUDA"
elif [[ $mode == full ]]; then
    : >"$RESULTS/env.txt"
    gpu=$("$PY" 2>>"$RESULTS/env.txt" - <<'EOF'
import os, sys
try:
    import torch
except ImportError as err:
    print(f"no torch in {sys.executable} ({err}): set GPU_CHECK_PYTHON to the Python that holds the box's torch")
    sys.exit(1)
if not torch.cuda.is_available():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"no CUDA device visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}) in "
          f"{sys.executable}" + (f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""))
    sys.exit(1)
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.device_count()} x {p.name} ({p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}); "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}; {sys.executable}")
EOF
    ) || die "$gpu"
fi

# pip from the wheels folder alone: --no-index, and no pip.conf, PIP_* index or find-links setting of this
# machine can add a source (a stale mirror on the box would make the check prove nothing).
pip_offline() {
    env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT -u PIP_REQUIREMENT \
        PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$1/bin/python" -m pip "${@:2}" --no-index --find-links "$WHEELS" --progress-bar off
}

# One line naming what is missing, from pip's log of a failed install.
install_failed() {
    local missing
    missing=$(grep -oE "No matching distribution found for [^ ]+" "$INSTALL_LOG" | head -1 | awk '{print $NF}' || true)
    if [[ -z $missing ]]; then
        missing=$(grep -A1 "no matching distributions available for your environment" "$INSTALL_LOG" |
            sed -n 2p | tr -d ' ' || true)
    fi
    missing=${missing%%[<>=!~;]*}
    if [[ $missing == torch ]]; then
        die "$PY has no torch for the venv to reuse: set GPU_CHECK_PYTHON to the Python that holds the box's torch"
    elif [[ -n $missing ]]; then
        die "$WHEELS has no wheel of $missing that Python $py_version on $(uname -m) can install: remake it with make gpu-wheels GPU_PYTHON=$py_version (GPU_GLIBC=this box's glibc) (see $INSTALL_LOG)"
    fi
    die "offline install failed: $(grep -E '^ERROR' "$INSTALL_LOG" | tail -1 || true) (see $INSTALL_LOG)"
}

make_venv() {
    "$PY" -m venv --system-site-packages --clear "$1" >>"$INSTALL_LOG" 2>&1 ||
        die "could not create a venv with $PY -m venv (see $INSTALL_LOG)"
    "$1/bin/python" "$HELPERS" link-parent "$(command -v "$PY")" >>"$INSTALL_LOG" 2>&1 ||
        die "could not link $PY's packages into the venv (see $INSTALL_LOG)"
}

requirement="${mmmo_wheels[0]}[$extras]"
: >"$INSTALL_LOG"
if [[ $mode == check ]]; then
    tmp_venv=$(mktemp -d)
    trap 'rm -rf "$tmp_venv"' EXIT
    make_venv "$tmp_venv"
    pip_offline "$tmp_venv" install --dry-run -c "$CONSTRAINTS" "$requirement" >>"$INSTALL_LOG" 2>&1 || install_failed
    count=$(grep -E "^Would install" "$INSTALL_LOG" | wc -w)
    echo "gpu_check: $WHEELS installs offline for Python $py_version (dry run: $((count > 2 ? count - 2 : 0)) packages, the rest already there)"
    exit 0
fi

stamp=$({ ls -l "$WHEELS"; cat "$CONSTRAINTS"; "$PY" -c 'import sys; print(sys.executable, sys.version)'; } |
    sha256sum | cut -c1-16)
t0=$SECONDS
if [[ -f $VENV/.gpu-check-stamp && $(cat "$VENV/.gpu-check-stamp") == "$stamp" ]]; then
    echo "gpu_check: reusing $VENV (same wheels, constraints and Python)" | tee -a "$INSTALL_LOG"
else
    echo "gpu_check: installing mmmo[$extras] offline from $WHEELS into $VENV"
    rm -f "$VENV/.gpu-check-stamp"
    make_venv "$VENV"
    pip_offline "$VENV" install -c "$CONSTRAINTS" "$requirement" >>"$INSTALL_LOG" 2>&1 || install_failed
    echo "$stamp" >"$VENV/.gpu-check-stamp"
fi
VPY=$VENV/bin/python
(cd "$RESULTS" && "$VPY" "$HELPERS" same-sources "$REPO/src/mmmo") || exit 1
installed=$(grep -E "^Successfully installed" "$INSTALL_LOG" | wc -w || true)
echo "gpu_check: venv ready in $((SECONDS - t0)) s ($((installed > 2 ? installed - 2 : 0)) packages installed this run)"
if [[ $mode == install ]]; then
    exit 0
fi

# ---- the checks on CUDA
export HF_HOME=$WORK/hf_home HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg PYTHONUNBUFFERED=1
mkdir -p "$WORK"
{
    echo "gpu: $gpu"
    echo "host: $(uname -srm); $(ldd --version 2>/dev/null | head -1)"
    echo "wheels: $WHEELS ($(manifest wheels) wheels for Python $wheels_python, glibc $(manifest glibc))"
    command -v nvidia-smi >/dev/null && nvidia-smi
    echo "--- pip freeze of $VENV (the box's own packages included)"
    "$VPY" -m pip freeze --disable-pip-version-check 2>&1
} >>"$RESULTS/env.txt" 2>&1 || true
echo "gpu: $gpu" | tee "$SUMMARY"

failed=()
# Each step runs in the background and is waited for: in an `if` its commands would run without errexit.
step() {
    local name=$1 log=$2 start=$SECONDS
    shift 2
    echo "--- $name" >&2
    "$@" >"$log" 2>&1 &
    if wait $!; then
        echo "$name: ok in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    else
        echo "$name: FAILED after $((SECONDS - start)) s, see $log" | tee -a "$SUMMARY"
        failed+=("$name")
    fi
}

build_demo() {
    cd "$WORK"
    "$VENV/bin/mmmo" demo --dir "$WORK/demo"
}

cuda_tests() {
    cd "$REPO"
    MMMO_DEMO_DIR=$WORK/demo "$VPY" -m pytest -m cuda -rsxX -p no:cacheprovider tests
}

demo_search() {
    cd "$WORK"
    [[ -f $WORK/demo/demo.yaml ]] || { echo "no demo built in $WORK/demo"; return 1; }
    rm -rf "$WORK/run" "$WORK/search-report.txt"
    "$VPY" "$HELPERS" write-spec "$WORK/demo" "$WORK/search.yaml" "$WORK/run" "$DEVICE"
    local start=$SECONDS
    "$VENV/bin/mmmo" search "$WORK/search.yaml" --device "$DEVICE" --quiet
    "$VPY" "$HELPERS" search-report "$WORK/run" "$((SECONDS - start))" | tee "$WORK/search-report.txt"
}

merge_speed() {
    cd "$REPO"
    # ties and dare_ties, the methods (a) checks in the kernel on CUDA: a kernel that fails to compile turns the kernel
    # off for the rest of the process, so an untried one must not run first
    local args=(-m benchmarks.merge_speed --synthetic --cache "$WORK/merge-speed" --device "$DEVICE" --skip-mergekit
        --repeats 5 --methods ties dare_ties)
    [[ $DEVICE != cpu ]] || args+=(--layers 2 --repeats 2)  # the rehearsal: minutes, not the numbers
    "$VPY" "${args[@]}" --dtype float32 --fused off
    "$VPY" "${args[@]}" --dtype float32 --fused on
    "$VPY" "${args[@]}" --dtype bfloat16
}

step "demo build (CPU)" "$RESULTS/demo-build.log" build_demo
step "(a) pytest -m cuda" "$RESULTS/pytest-cuda.log" cuda_tests
grep -E "passed|failed|error|skipped|no tests ran" "$RESULTS/pytest-cuda.log" | tail -1 | tee -a "$SUMMARY" || true
step "(b) bf16 demo search on $DEVICE" "$RESULTS/search.log" demo_search
cat "$WORK/search-report.txt" 2>/dev/null | tee -a "$SUMMARY" || true
cp "$WORK/run/trials.jsonl" "$RESULTS/trials.jsonl" 2>/dev/null || true
step "(c) merge speed on $DEVICE" "$RESULTS/merge-speed.log" merge_speed
grep -E "^(device|params|ties|dare_ties)" "$RESULTS/merge-speed.log" | tee -a "$SUMMARY" || true

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "gpu_check: FAILED: ${failed[*]} (logs in $RESULTS)" | tee -a "$SUMMARY" >&2
    exit 1
fi
echo "gpu_check: all checks passed (logs in $RESULTS)" | tee -a "$SUMMARY"
