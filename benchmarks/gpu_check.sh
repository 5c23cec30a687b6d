#!/usr/bin/env bash
# The GPU check (issue 17): on one CUDA GPU, in under 10 minutes in all,
#   1. images/s of one ERM training step per backbone (benchmarks/bench_backbones.py --device cuda --write), at
#      batch 100 for every backbone and at the cifar10-fast preset's batch 1024 for cifar-fast;
#   2. `nlbench run --preset cifar10-fast --dataset cifar10-jpeg` for erm, surrogate and mwnet on sym20 and on the
#      CIFAR-10N worst human labels (cifar10n-worst), seed 0;
#   3. results/gpu/summary.md, written by benchmarks/gpu_summary.py from those records (it names the GPU).
# Everything lands in results/gpu/ (records in runs/, logs in logs/, the exit code of each step in steps.tsv).
#
#   benchmarks/gpu_check.sh [--data-root DIR]
#
# DIR holds cifar10-jpeg/cifar10-jpeg.tar.gz and cifar-n/CIFAR-10_human.pt (the layout of ../shared/data; see the
# README, "Paper-scale settings"); default: $NLBENCH_DATA_ROOT, else ../shared/data, else shared/data. Nothing is
# written there: unless DIR already holds the decoded cache, the runs read DIR through a staging folder of links
# ($GPU_CHECK_STAGE, default $TMPDIR/nlbench-gpu-data-<checksum of DIR>) that takes the cache, so the JPEGs
# are decoded once.
# Environment: PYTHON (default .venv/bin/python, else python3); GPU_CHECK_EPOCHS (overrides the preset's epochs
# for a quicker check: the records then say so); GPU_CHECK_BUDGET_S (default 570: steps that would start past it
# are skipped, a running step is interrupted at it and leaves no record); GPU_CHECK_OUT (default results/gpu).
# A finished record is reused on a rerun.
# Without a visible CUDA GPU it prints one error line and exits 2, before anything is written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

die() {
    echo "error: $*" >&2
    exit 2
}

data_root="${NLBENCH_DATA_ROOT:-}"
while (($#)); do
    case "$1" in
        --data-root)
            (($# >= 2)) || die "--data-root needs a folder"
            data_root="$2"
            shift 2
            ;;
        --data-root=*)
            data_root="${1#--data-root=}"
            shift
            ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *) die "unknown argument '$1' (usage: benchmarks/gpu_check.sh [--data-root DIR])" ;;
    esac
done

budget="${GPU_CHECK_BUDGET_S:-570}"
[[ "$budget" =~ ^[0-9]+$ ]] || die "GPU_CHECK_BUDGET_S must be a whole number of seconds, got '$budget'"
epochs_opt=()
if [[ -n "${GPU_CHECK_EPOCHS:-}" ]]; then
    [[ "$GPU_CHECK_EPOCHS" =~ ^[1-9][0-9]*$ ]] \
        || die "GPU_CHECK_EPOCHS must be a positive integer, got '$GPU_CHECK_EPOCHS'"
    epochs_opt=(--epochs "$GPU_CHECK_EPOCHS")
fi

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
else
    py=python3
fi
command -v "$py" >/dev/null 2>&1 || die "no Python at '$py': set PYTHON to the interpreter that has nlbench"

# nvidia-smi first (no torch import when there is no driver), then what torch itself sees (CUDA_VISIBLE_DEVICES)
no_gpu="no CUDA GPU visible; gpu_check.sh measures the GPU path only"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    die "$no_gpu"
fi
cuda_rc=0
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1 || cuda_rc=$?
case $cuda_rc in
    0) ;;
    3) die "$no_gpu" ;;
    *) die "'$py' cannot import torch: set PYTHON to the interpreter that has nlbench" ;;
esac

if [[ -z "$data_root" ]]; then
    for d in ../shared/data shared/data; do
        if [[ -d "$d/cifar10-jpeg" ]]; then
            data_root="$d"
            break
        fi
    done
    [[ -n "$data_root" ]] || die "no data root: pass --data-root DIR (with cifar10-jpeg/ and cifar-n/) or set" \
        "NLBENCH_DATA_ROOT"
fi
jpeg="$data_root/cifar10-jpeg"
[[ -f "$jpeg/cifar10-jpeg.tar.gz" || -d "$jpeg/train" || -f "$jpeg/cache-v1.npz" ]] \
    || die "missing $jpeg/cifar10-jpeg.tar.gz (or its extracted train/ and test/): see the README," \
        "\"Paper-scale settings\""
[[ -f "$data_root/cifar-n/CIFAR-10_human.pt" ]] \
    || die "missing $data_root/cifar-n/CIFAR-10_human.pt (the CIFAR-10N labels, needed for cifar10n-worst)"
source_root="$data_root"
if [[ ! -f "$jpeg/cache-v1.npz" ]]; then
    key=$(realpath "$data_root" | cksum | cut -d' ' -f1)  # one staging folder (and cache) per source folder
    stage="${GPU_CHECK_STAGE:-${TMPDIR:-/tmp}/nlbench-gpu-data-$key}"
    mkdir -p "$stage/cifar10-jpeg" || die "cannot create the staging folder $stage (set GPU_CHECK_STAGE)"
    ln -sfn "$(realpath "$data_root/cifar-n")" "$stage/cifar-n"
    for f in cifar10-jpeg.tar.gz train test; do
        if [[ -e "$jpeg/$f" ]]; then
            ln -sfn "$(realpath "$jpeg/$f")" "$stage/cifar10-jpeg/$f"
        fi
    done
    data_root="$stage"
fi

out="${GPU_CHECK_OUT:-results/gpu}"
mkdir -p "$out/logs" || die "cannot write $out"
steps="$out/steps.tsv"
printf 'step\texit\tseconds\n' >"$steps"
failed=0

# step NAME CMD...: runs CMD with what is left of the budget, logs to $out/logs/NAME.log, one line in steps.tsv
step() {
    local name="$1" left=$((budget - SECONDS)) t0=$SECONDS rc
    shift
    if ((left < 15)); then
        echo "skip  $name (budget of ${budget}s spent)"
        printf '%s\tskipped\t0\n' "$name" >>"$steps"
        failed=1
        return
    fi
    echo "start $name (${left}s left)"
    rc=0
    timeout --signal=INT --kill-after=20 "$left" "$@" >"$out/logs/$name.log" 2>&1 || rc=$?
    if ((rc == 124)); then
        echo "      $name: interrupted at the budget"
    fi
    if ((rc != 0)); then
        failed=1
    fi
    printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t0)) >>"$steps"
    echo "done  $name: exit $rc, $((SECONDS - t0)) s"
}

"$py" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA",
    torch.version.cuda)'
if [[ "$data_root" == "$source_root" ]]; then
    echo "data root: $data_root"
else
    echo "data root: $source_root (read through the links in $data_root)"
fi
step backbones "$py" benchmarks/bench_backbones.py --device cuda --write --out "$out/backbones-cuda.json"
step backbones-b1024 "$py" benchmarks/bench_backbones.py --device cuda --models cifar-fast --batch 1024 --write \
    --out "$out/backbones-cuda-b1024.json"
for noise in sym20 cifar10n-worst; do
    for method in erm surrogate mwnet; do
        step "$method-$noise" "$py" -m nlbench.cli run --preset cifar10-fast --dataset cifar10-jpeg \
            --method "$method" --noise "$noise" --seed 0 "${epochs_opt[@]}" --data-root "$data_root" --device cuda \
            --results-dir "$out"
    done
done
"$py" benchmarks/gpu_summary.py --results-dir "$out" --data-root "$source_root" || failed=1
echo "wrote $out/summary.md (${SECONDS}s in all)"
exit $((failed ? 1 : 0))
