"""What checkpointing costs a Keras trial (issue 21's target: <= 5 % of an epoch for mnist_mlp).

    python bench/checkpoint_cost.py [--trials 4] [--epochs 4] [--train-size 10000]

Runs a real ``hyperfleet search mnist_mlp`` with one worker against a throwaway embedded server,
checkpointing after every epoch (the default), and reads back each trial's ``timing.checkpoint_s``
(packing the model's and optimizer's variables and writing them through the store, inside the
fit) and its per-epoch ``seconds`` (the epoch itself, checkpoint excluded). It prints, per trial
and as medians: seconds per checkpoint, the median steady epoch (epochs after the first, which
includes compiling) and their ratio, and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.server import EmbeddedServer  # noqa: E402
from coordinator.store import connect  # noqa: E402

EXP_KEY = "checkpoint-cost"


def hyperfleet(*argv: str) -> list[str]:
    return [sys.executable, "-m", "coordinator", *argv]


def run(uri: str, args: argparse.Namespace, log: Path, exp_key: str, every: int) -> None:
    settings = [
        *("--set", f"epochs={args.epochs}"),
        *("--set", f"train_size={args.train_size}"),
        *("--set", "val_size=1000"),
    ]
    with open(log, "w") as out:
        worker = subprocess.Popen(
            hyperfleet(
                "worker",
                "--mongo",
                uri,
                "--exp-key",
                exp_key,
                "--idle-timeout",
                "600",
                "--checkpoint-every",
                str(every),
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            search = subprocess.run(
                hyperfleet(
                    "search",
                    "mnist_mlp",
                    "--mongo",
                    uri,
                    "--exp-key",
                    exp_key,
                    "--max-evals",
                    str(args.trials),
                    "--seed",
                    "1",
                    *settings,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                timeout=args.timeout,
            )
            if search.returncode != 0:
                raise SystemExit(f"the search failed; see {log}")
        finally:
            worker.terminate()
            worker.wait(60)


def steady_epochs(uri: str, exp_key: str) -> list[float]:
    """Every trial's epochs after its first (which includes compiling), in seconds."""
    store = connect(uri)
    found = [e["seconds"] for d in store.trials(exp_key) for e in d.get("epochs", [])[1:]]
    store.close()
    return found


def rows(uri: str, exp_keys: list[str]) -> list[dict[str, float]]:
    store = connect(uri)
    found = []
    for doc in (d for key in exp_keys for d in store.trials(key)):
        result, timing = doc.get("result") or {}, doc.get("timing") or {}
        saved = result.get("checkpoints") or 0
        steady = [e["seconds"] for e in doc.get("epochs", [])[1:] if "seconds" in e]
        if not saved or not steady:
            continue
        per_checkpoint = timing["checkpoint_s"] / saved
        epoch = statistics.median(steady)
        found.append(
            {
                "tid": doc["tid"],
                "checkpoints": saved,
                "s_per_checkpoint": round(per_checkpoint, 4),
                "steady_epoch_s": round(epoch, 4),
                "share_of_epoch": round(per_checkpoint / epoch, 4),
                "bytes": result.get("checkpoint_bytes"),
                "write_s_per_checkpoint": round(timing.get("checkpoint_write_s", 0.0) / saved, 4),
            }
        )
    left = store.db["fs.files"].count_documents({"kind": "checkpoint"})
    store.close()
    if left:
        raise SystemExit(f"{left} checkpoints were left after the search ended")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (a steady epoch, and a checkpoint before it)")
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp) / "db", sync=True)
        server.start()
        try:
            # interleaved: without checkpoints, with, without, with (same seed, same trials)
            for i in range(2):
                run(server.uri, args, Path(tmp) / "run.log", f"{EXP_KEY}-off-{i}", 0)
                run(server.uri, args, Path(tmp) / "run.log", EXP_KEY if i else f"{EXP_KEY}-0", 1)
            found = rows(server.uri, [f"{EXP_KEY}-0", EXP_KEY])
            off = [e for i in range(2) for e in steady_epochs(server.uri, f"{EXP_KEY}-off-{i}")]
            on = steady_epochs(server.uri, EXP_KEY) + steady_epochs(server.uri, f"{EXP_KEY}-0")
        finally:
            server.stop()
    trials = found
    if not trials:
        raise SystemExit("no trial saved a checkpoint")
    for row in trials:
        print(json.dumps(row))
    share = statistics.median(r["share_of_epoch"] for r in trials)
    print(
        f"checkpoint: median {statistics.median(r['s_per_checkpoint'] for r in trials):.4f} s, "
        f"steady epoch median {statistics.median(r['steady_epoch_s'] for r in trials):.3f} s: "
        f"{share:.1%} of an epoch (target <= 5 %) waited for by training, over {len(trials)} "
        f"trials; the write itself (in the background): median "
        f"{statistics.median(r['write_s_per_checkpoint'] for r in trials):.4f} s"
    )
    slower = statistics.median(on) / statistics.median(off) - 1
    print(
        f"steady epochs with a checkpoint each: median {statistics.median(on):.3f} s; without "
        f"checkpoints: {statistics.median(off):.3f} s ({slower:+.1%}; {len(on)} and {len(off)} "
        "epochs, runs interleaved)"
    )


if __name__ == "__main__":
    main()
