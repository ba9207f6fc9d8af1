#!/usr/bin/env bash
# Every GPU benchmark of the engine (issue 18). Needs only Python, torch and torchvision: no Ray, no
# MLflow, no network, nothing installed; run from anywhere, it works in the repo root with
# PYTHONPATH=. . Each stage has a time limit; a device call may last 10 minutes, so the stages come
# in two parts, one call each (STAGES picks them; default: all, for a machine without that limit):
#
#   STAGES=headline bash benchmarks/gpu_run.sh OUT_DIR [CIFAR_ZIP] [--smoke]   # ~4 min on an H100, limits 465 s
#   STAGES=zoo bash benchmarks/gpu_run.sh OUT_DIR [CIFAR_ZIP] [--smoke]        # ~6 min, limits 560 s
#
# OUT_DIR receives (one folder down):
#   gpu_run.log                      everything printed, stage by stage
#   environment.json                 GPU, driver, versions
#   headline:
#   eager/engine_throughput.json     ResNet-18 img/s: engine (bf16, channels_last, device data) vs the peer loop
#   compile/engine_throughput.json   the same with --compile
#   eager/time_to_accuracy.json      ResNet-18 to 90% val acc on CIFAR-10 (45k/5k split)
#   compile/time_to_accuracy.json    the same with --compile
#   zoo:
#   families/engine_throughput.json  one arch of every family at its default knobs: img/s, peak memory
#   sharing/gpu_sharing.jsonl        1, 2, 4 processes training one small model at once: the gpus_per_worker fraction
#   budget/<arch>/time_to_accuracy.json  every family for the same short budget (10 epochs one-cycle): val acc, seconds
# CIFAR_ZIP: the CIFAR-10 JPEG training zip copied into the repo's ignored data folder (default:
# data/cifar10-jpeg-train.zip or .data/cifar10-jpeg-train.zip, whichever exists).
# --smoke (or SMOKE=1): everything tiny, on the CPU, to check the script itself (the numbers mean
# nothing); synthetic data, or with CIFAR_ZIP given, the zip (time-to-accuracy on 500 images of it).
set -uo pipefail

SMOKE=${SMOKE:-0}
positional=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) positional+=("$arg") ;;
    esac
done
if [ "${#positional[@]}" -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_run.sh OUT_DIR [CIFAR_ZIP] [--smoke]" >&2
    exit 2
fi
OUT_DIR=$(mkdir -p "${positional[0]}" && cd "${positional[0]}" && pwd) || exit 2
ZIP=${positional[1]:-}

cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -z "${PYTHON:-}" ]; then
    if [ "$SMOKE" = 1 ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "$ZIP" ]; then
    for candidate in data/cifar10-jpeg-train.zip .data/cifar10-jpeg-train.zip; do
        [ -f "$candidate" ] && ZIP=$candidate && break
    done
fi
STAGES=${STAGES:-all}
case "$STAGES" in all|headline|zoo) ;; *) echo "STAGES must be all, headline or zoo, not '$STAGES'" >&2; exit 2 ;; esac
part() { [ "$STAGES" = all ] || [ "$STAGES" = "$1" ]; }
LOG=$OUT_DIR/gpu_run.log
touch "$LOG"
failures=()

# stage NAME SECONDS COMMAND...: run with a time limit, log it, carry on if it fails.
stage() {
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
    [ "$rc" = 0 ] || failures+=("$name (exit $rc)")
}

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    if [ -n "$ZIP" ]; then DATA=(--dataset imagefolder --root "$ZIP"); TTA_DATA=(--root "$ZIP" --subset 500)
    else DATA=(--dataset synthetic --synthetic-size 256); TTA_DATA=(--dataset synthetic --synthetic-size 256); fi
    THROUGHPUT=(--device cpu --smallest --batch-size 16 --steps 2 --warmup 1 --repeats 1 --peer-workers 1)
    TTA=(--device cpu --width 0.125 --epochs 2 --warmup-epochs 0.5 --batch-size 64)
    COMPILE_STAGES=${SMOKE_COMPILE:-0}  # compiling on a small CPU takes minutes: off unless asked
    LIMIT_THROUGHPUT=120; LIMIT_TTA=120; LIMIT_COMPILED=120
    FAMILIES=(--device cpu --batch-size 16 --steps 2 --warmup 1 --repeats 1)
    SHARING=(--smoke); BUDGET=(--device cpu --epochs 1 --warmup-epochs 0.5 --batch-size 64 --width 0.125)
    BUDGET_ARCHS=(resnet18 vgg11); LIMIT_FAMILIES=300; LIMIT_SHARING=180; LIMIT_BUDGET=60
else
    DEVICE=cuda
    if [ -z "$ZIP" ] || [ ! -f "$ZIP" ]; then
        echo "no CIFAR-10 zip: copy cifar10-jpeg-train.zip to data/ (or .data/)," \
             "or pass its path as the second argument" >&2
        exit 2
    fi
    DATA=(--dataset imagefolder --root "$ZIP"); TTA_DATA=(--root "$ZIP")
    THROUGHPUT=(--device cuda --arch resnet18 --batch-size 512 --steps 50 --warmup 10 --repeats 3 --peer-workers 8)
    TTA=(--device cuda)  # the script's stated recipe: 16 epochs, batch 512, lr 0.4 one-cycle, ...
    COMPILE_STAGES=1
    # Expected on an H100: about 20 s, 40 s, 70 s and 100 s; the limits sum, with the first two
    # stages', to 465 s.
    LIMIT_THROUGHPUT=60; LIMIT_TTA=75; LIMIT_COMPILED=120
    FAMILIES=(--device cuda --batch-size 512 --steps 30 --warmup 10 --repeats 2)
    SHARING=(--device cuda)
    # The same short budget for every family: 10 epochs, one-cycle, the script's recipe otherwise.
    BUDGET=(--device cuda --epochs 10 --warmup-epochs 2)
    BUDGET_ARCHS=(resnet18 vgg11 se_resnet18 shufflenet_v1 mobilenet_v2 efficientnet_b0 parnet resnext29
                  googlenet densenet_bc res2net50 resnest50 alexnet)  # fastest first: a cut loses the slow ones
    # Limits: families 120 s, sharing 180 s (2 models x K = 1, 2, 4, each process starting cold),
    # budget 260 s in all (the stage is cut there; the families done by then are kept).
    LIMIT_FAMILIES=120; LIMIT_SHARING=180; LIMIT_BUDGET=260
fi

stage environment 30 "$PYTHON" - "$OUT_DIR/environment.json" "$DEVICE" <<'EOF'
import json, os, platform, subprocess, sys
import torch, torchvision
import orchestrator.engine, orchestrator.data  # the import chain the benchmarks use
assert "ray" not in sys.modules and "mlflow" not in sys.modules, "the engine's imports pulled in Ray or MLflow"
device = sys.argv[2]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cpu_count": os.cpu_count(),
       "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
if device == "cuda":
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
    try:
        env["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        env["nvidia_smi"] = f"unavailable: {e}"
with open(sys.argv[1], "w") as f:
    json.dump(env, f, indent=2)
print(json.dumps(env))
EOF

if [ "${DATA[1]}" = imagefolder ]; then
    # Decode the zip once (about 50,000 JPEGs); later stages read the decoded tensors from the cache.
    stage decode-dataset 60 "$PYTHON" -c "
import sys, time
from orchestrator import data
start = time.perf_counter()
splits = data.load_splits(data.DataSpec('imagefolder', root=sys.argv[1], val_fraction=0.1, split_seed=0))
print(f'{len(splits.train)} train / {len(splits.val)} val images ready in {time.perf_counter() - start:.1f}s')
" "$ZIP"
fi

# Most important first: a stage that runs out of time only loses what comes after it.
if part headline; then
stage throughput-eager "$LIMIT_THROUGHPUT" "$PYTHON" -m benchmarks.engine_throughput "${THROUGHPUT[@]}" \
    "${DATA[@]}" --out "$OUT_DIR/eager"
stage time-to-accuracy-eager "$LIMIT_TTA" "$PYTHON" -m benchmarks.time_to_accuracy "${TTA[@]}" "${TTA_DATA[@]}" \
    --out "$OUT_DIR/eager"
if [ "$COMPILE_STAGES" = 1 ]; then
    stage throughput-compile "$LIMIT_COMPILED" "$PYTHON" -m benchmarks.engine_throughput "${THROUGHPUT[@]}" \
        "${DATA[@]}" --compile --out "$OUT_DIR/compile"
    stage time-to-accuracy-compile "$LIMIT_COMPILED" "$PYTHON" -m benchmarks.time_to_accuracy "${TTA[@]}" \
        "${TTA_DATA[@]}" --compile --out "$OUT_DIR/compile"
fi
fi

if part zoo; then
    stage families "$LIMIT_FAMILIES" "$PYTHON" -m benchmarks.engine_throughput --per-family --defaults --no-peer \
        "${FAMILIES[@]}" "${DATA[@]}" --out "$OUT_DIR/families"
    stage sharing "$LIMIT_SHARING" "$PYTHON" -m benchmarks.gpu_sharing "${SHARING[@]}" --out "$OUT_DIR/sharing"
    # One time limit over all the families: each runs while time is left, fastest first.
    budget_end=$((SECONDS + LIMIT_BUDGET))
    for arch in "${BUDGET_ARCHS[@]}"; do
        left=$((budget_end - SECONDS))
        [ "$left" -gt 5 ] || { failures+=("budget: no time left for $arch"); echo "=== budget: no time left for $arch" | tee -a "$LOG"; continue; }
        stage "budget-$arch" "$left" "$PYTHON" -m benchmarks.time_to_accuracy --arch "$arch" "${BUDGET[@]}" \
            "${TTA_DATA[@]}" --out "$OUT_DIR/budget/$arch"
    done
fi

# The headline numbers, last, so they end the output.
"$PYTHON" - "$OUT_DIR" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys
out = sys.argv[1]
print("=== results (" + out + ")")
for variant in ("eager", "compile"):
    path = os.path.join(out, variant, "engine_throughput.json")
    if os.path.exists(path):
        for r in json.load(open(path))["results"]:
            e = r["engine"]
            print(f"{variant:8s} throughput {r['arch']}: engine {r['engine_imgs_per_s']:,.0f} img/s, peer "
                  f"{r['peer_imgs_per_s'] or 0:,.0f} img/s, speedup {r['speedup']}x, host syncs in "
                  f"{e.get('sync_check_steps', '-')} steps: {e.get('sync_warnings', '-')}")
    path = os.path.join(out, variant, "time_to_accuracy.json")
    if os.path.exists(path):
        r = json.load(open(path))
        print(f"{variant:8s} time to {r['target_val_acc']:.0%}: {r['seconds_to_target']} s of training "
              f"(epoch {r['epoch_at_target']}; {r['seconds_to_target_without_first_epoch_overhead']} s without the "
              f"first epoch's {r['first_epoch_overhead_s']} s overhead), final val_acc {r['final_val_acc']:.4f}, "
              f"{r['train_s_total']} s over {len(r['epochs'])} epochs, median epoch {r['median_epoch_train_s']} s")
path = os.path.join(out, "families", "engine_throughput.json")
if os.path.exists(path):
    for r in json.load(open(path))["results"]:
        print(f"family   {r['family']:12s} {r['arch']:16s} {r['engine_imgs_per_s']:>10,.0f} img/s  "
              f"peak {r['engine']['peak_mem_mb']} MB  {r['engine']['precision']}")
path = os.path.join(out, "sharing", "gpu_sharing.jsonl")
if os.path.exists(path):
    for line in open(path):
        r = json.loads(line)
        if "aggregate_imgs_per_s" in r:
            print(f"sharing  {r['model']:36s} x{r['procs']}: {r['aggregate_imgs_per_s']:>10,.0f} img/s in all, "
                  f"peak {r['peak_mem_mb_per_process']} MB each, windows overlap {r['timed_windows_overlap']}")
        elif r.get("summary"):
            print(f"sharing  recommended: {json.dumps(r['recommended'])}")
budget = os.path.join(out, "budget")
for arch in sorted(os.listdir(budget)) if os.path.isdir(budget) else []:
    path = os.path.join(budget, arch, "time_to_accuracy.json")
    if os.path.exists(path):
        r = json.load(open(path))
        print(f"budget   {arch:16s} val_acc {r['final_val_acc']:.4f} after {len(r['epochs'])} epochs, "
              f"{r['train_s_total']} s of training")
EOF

if [ "${#failures[@]}" -gt 0 ]; then
    echo "FAILED: ${failures[*]}" | tee -a "$LOG"
    exit 1
fi
echo "all stages passed" | tee -a "$LOG"
