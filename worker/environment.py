"""Device pinning and CPU thread limits, applied before any ML framework is imported.

Environment variables are the only knobs that reach every framework and the supervised child
process (which inherits them): ``CUDA_VISIBLE_DEVICES`` for the GPU, ``OMP_NUM_THREADS`` and
friends plus TensorFlow's and XLA's own for threads.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from coordinator.errors import ConfigError, counted

logger = logging.getLogger(__name__)

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


def check_gpu_ids(gpus: list[str], option: str = "--gpus") -> None:
    """Refuse GPU ids this machine does not have (``nvidia-smi -L`` numbers them, as
    ``CUDA_VISIBLE_DEVICES`` does): a worker pinned to a missing GPU would quietly train on
    the CPU. Without a working ``nvidia-smi`` nothing can be checked: a warning says so."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning(
            "%s %s: cannot check the GPU ids (nvidia-smi -L: %s); a worker pinned to a GPU "
            "that does not exist trains on the CPU",
            option,
            ",".join(gpus),
            e.strerror if isinstance(e, OSError) else "timed out",
        )
        return
    found = sum(line.startswith("GPU ") for line in listed.stdout.splitlines())
    if listed.returncode != 0 or not found:
        why = (listed.stderr or listed.stdout).strip().splitlines()[:1] or ["no GPU listed"]
        logger.warning(
            "%s %s: nvidia-smi -L lists no GPU (%s); workers pinned to GPUs train on the CPU",
            option,
            ",".join(gpus),
            why[0][:200],
        )
        return
    missing = [g for g in gpus if int(g) >= found]
    if missing:
        raise ConfigError(
            f"{option} {','.join(gpus)}: this machine has {counted(found, 'GPU')} (ids 0 to "
            f"{found - 1}, see nvidia-smi -L); there is no GPU {missing[0]}"
        )
