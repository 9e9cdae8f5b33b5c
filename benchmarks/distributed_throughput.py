"""Meta-training throughput on one process against P processes under torchrun (gloo on CPU).

    python benchmarks/distributed_throughput.py [--processes 2] [--iterations 30] [--algorithm maml]

Runs the same training command (Omniglot, 5-way 1-shot, meta-batch 16, 3 inner steps) three
ways, each in fresh processes: one process with one thread, one process with P threads, and P
processes of one thread sharing each meta-batch. Prints the median meta-training tasks/s of
each (first 5 iterations skipped) and the ratios, and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from fewshot_serve.files.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def tasks_per_second(arguments: list[str], processes: int, threads: int, folder: Path) -> float:
    out = folder / f"p{processes}t{threads}.safetensors"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "fewshot_serve.train", *arguments,
                                                                    "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=environment, capture_output=True, text=True)
    log = [json.loads(line) for line in (out.with_suffix(".run") / "log.jsonl").read_text().splitlines()]
    rates = [r["tasks_per_s"] for r in log if "tasks_per_s" in r]
    return statistics.median(rates[5:] or rates)


def run(processes: int, iterations: int, algorithm: str, extra: list[str]) -> dict:
    arguments = ["--algorithm", algorithm, "--ways", "5", "--shots", "1", "--queries", "5", "--inner-steps", "3",
                 "--meta-batch", "16", "--iterations", str(iterations), "--val-every", str(iterations),
                 "--val-episodes", "10", *extra]
    with tempfile.TemporaryDirectory() as folder:
        rates = {
            "1 process, 1 thread": tasks_per_second(arguments, 1, 1, Path(folder)),
            f"1 process, {processes} threads": tasks_per_second(arguments, 1, processes, Path(folder)),
            f"{processes} processes, 1 thread each": tasks_per_second(arguments, processes, 1, Path(folder)),
        }
    return {"algorithm": algorithm, "processes": processes, "iterations": iterations, "tasks_per_s": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--algorithm", default="maml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distributed_throughput.json")
    args, extra = parser.parse_known_args()  # anything else goes to the trainer (e.g. --dataset folder ...)
    report = run(args.processes, args.iterations, args.algorithm, extra)
    rates = list(report["tasks_per_s"].items())
    base = rates[0][1]
    for name, rate in rates:
        print(f"{name:28s} {rate:7.2f} tasks/s  ({rate / base:.2f}x the first)")
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
