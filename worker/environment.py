"""Device pinning and CPU thread limits, applied before any ML framework is imported.

Environment variables are the only knobs that reach every framework and the supervised child
process (which inherits them): ``CUDA_VISIBLE_DEVICES`` for the GPU, ``OMP_NUM_THREADS`` and
friends plus TensorFlow's and XLA's own for threads.
"""

from __future__ import annotations

import os
from typing import Any

_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)


def pin_devices(gpu: str | None, threads: int | None) -> dict[str, Any]:
    """Set the environment for ``--gpu`` (an id list, ``"none"`` or None) and ``--threads``.

    Returns facts to record on each trial's ``worker`` field.
    """
    if gpu == "none":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # hide every GPU: CPU only
    elif gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    # several workers may share one GPU: allocate memory as needed, not all of it up front
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads is not None:
        for var in _THREAD_VARS:
            os.environ[var] = str(threads)
        xla = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in xla:
            os.environ["XLA_FLAGS"] = (
                f"{xla} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={threads}"
            ).strip()
    return {
        "gpu": gpu,
        # the host's GPU id where a container sees its one GPU as 0 (compose, `hyperfleet launch`)
        "host_gpu": os.environ.get("HYPERFLEET_HOST_GPU"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "threads": threads,
    }
