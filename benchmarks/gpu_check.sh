#!/usr/bin/env bash
# GPU check, for whoever has a GPU: in one go (under 8 minutes on one data-centre GPU) it
#   1. times HiFusion at the paper profile (224/448 px, levels [1, 4, 49]) with channels_last on and off
#      (bf16 autocast on CUDA): training and inference spots/s, peak GPU memory, fraction of the bf16 roofline;
#   2. trains the paper profile for 2 epochs on the HER2ST sample shipped in the package (train C2, test C3);
#   3. predicts one whole slide (C4's H&E) with that checkpoint;
#   4. runs a 1-GPU fit under the DDP strategy (NCCL on CUDA, gloo on CPU);
# and prints one Markdown table (spots/s, peak GPU MB, bf16 roofline fraction, wall s, status per step).
#
# Usage: bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--epochs N] [--steps N] [--out DIR]
#   --device cpu  runs every step on the CPU (roofline and GPU memory are n/a): keeps the script from rotting
#   --quick       CI-sized: 32 px spots, a small HiFusion (levels [1, 4], ResNet-10, width 64), 1 epoch, 1 timed
#                 step, a coarse prediction grid
# Environment: PYTHON (interpreter, default python), GPU_PEAK_TFLOPS (bf16 peak of a GPU not in the table).
# The hifusion package is imported from PYTHONPATH or the installed package; results stay in --out (default: a
# temporary folder, removed at the end). Exit code 0 only when every step succeeded.
set -euo pipefail

DEVICE=cuda
QUICK=0
EPOCHS=""
STEPS=""
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --epochs) EPOCHS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu" >&2; exit 2 ;; esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-python}"
export HIFUSION_PROGRESS=0
if [[ -z "$OUT" ]]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/hifusion-gpu-check.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
else
    WORK="$OUT"
    mkdir -p "$WORK"
fi

if [[ "$QUICK" == 1 ]]; then
    PROFILE=tiny; SPOT_PX=32; EPOCHS="${EPOCHS:-1}"; STEPS="${STEPS:-1}"; PITCH=700; BATCH=16
else
    PROFILE=paper; SPOT_PX=224; EPOCHS="${EPOCHS:-2}"; STEPS="${STEPS:-5}"; PITCH=150; BATCH=32
fi
OPTIONS="$("$PY" "$HERE/gpu_check.py" options "$PROFILE")"  # the model the throughput step times, as YAML
SAMPLE="$("$PY" -c 'from hifusion.data.sample import her2st_sample; print(her2st_sample())')"
CONFIG="$REPO/configs/her2st_c_3d_paper.yaml"
# the paper config on the shipped sample: C2 trains, C3 tests; the cache is shared by the train and DDP steps
COMMON=(--set data.prepare.root=null --set "data.cache=$WORK/cache" --set "data.prepare.spot_px=$SPOT_PX"
        --set 'data.prepare.sections=[C2, C3]' --set 'protocol.test=[C3]'
        --set "model.options=$OPTIONS" --set "train.batch_size=$BATCH" --accelerator "$DEVICE")

FAILED=0
step() {  # step LABEL COMMAND...: run one step, keep going when it fails, remember the failure
    local label="$1"; shift
    local t0=$SECONDS
    echo "[gpu_check] $label ..." >&2
    if "$@" > "$WORK/$label.log" 2>&1; then
        echo "[gpu_check] $label ok ($((SECONDS - t0)) s)" >&2
    else
        FAILED=1
        echo "[gpu_check] $label FAILED ($((SECONDS - t0)) s); last lines of $WORK/$label.log:" >&2
        tail -n 20 "$WORK/$label.log" >&2
    fi
}

step throughput "$PY" "$HERE/gpu_check.py" throughput --device "$DEVICE" --profile "$PROFILE" --steps "$STEPS" \
    --json "$WORK/throughput.json"
step train "$PY" "$HERE/gpu_check.py" cli --label train --json "$WORK/train.json" -- \
    train "$CONFIG" "${COMMON[@]}" --set "train.epochs=$EPOCHS" --out "$WORK/train"
step predict "$PY" "$HERE/gpu_check.py" cli --label predict --json "$WORK/predict.json" -- \
    predict --checkpoint "$WORK/train/runs/fixed/hifusion/checkpoints/last.ckpt" \
    --slide "$SAMPLE/ST-imgs/C/C4/5714_HE_BT_D2.jpg" --mpp 0.688 --pitch-um "$PITCH" --genes ERBB2 \
    --device "$DEVICE" --out "$WORK/predict"
step ddp "$PY" "$HERE/gpu_check.py" cli --label ddp --json "$WORK/ddp.json" -- \
    train "$CONFIG" "${COMMON[@]}" --set train.epochs=1 --strategy ddp --devices 1 --out "$WORK/ddp"

"$PY" "$HERE/gpu_check.py" table --work "$WORK" --device "$DEVICE" --epochs "$EPOCHS"
exit "$FAILED"
