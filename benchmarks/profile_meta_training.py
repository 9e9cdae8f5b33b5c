"""Where meta-training time goes: torch.profiler's per-op self time, grouped, query pass written out vs fused.

    python benchmarks/profile_meta_training.py [--meta-batch 8] [--repeats 3] [--default-allocator]

One outer update of ``train_throughput.py``'s Conv4 (5-way 1-shot, 15 queries per class, 2 inner
steps, the per-task loop) for MAML and FOMAML, each twice: with the query pass on the written-out
norm in NCHW (what every query pass ran before), and on the fused kernels (``first_order_kernels``:
``SupportStatisticsNorm``, channels-last), as the trainer runs it now. Ops are grouped as in
``profile_adaptation.py``. Runs under the allocator setting ``fewshot-serve`` uses
(``--default-allocator``: glibc's). Prints ms per task and shares, and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import torch
from profile_adaptation import GROUPS, profile_call  # benchmarks/ is this script's folder
from train_throughput import INNER, make_batch

from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.networks import Conv4
from fewshot_serve.serving.allocator import keep_freed_memory
from fewshot_serve.training import meta_learning

ROOT = Path(__file__).resolve().parents[1]
FUSED = meta_learning.first_order_kernels
QUERY_PASSES = {"written-out query pass": contextlib.nullcontext, "fused query pass": FUSED}


def run(meta_batch: int, repeats: int, size: int = 28) -> dict:
    torch.manual_seed(0)
    network = Conv4(1, 64, size)
    with torch.no_grad():
        network.head.weight.normal_(0, 0.01)
    batch = make_batch(5, 1, 15, meta_batch, "cpu", size)
    params = dict(network.named_parameters())
    report = {"threads": torch.get_num_threads(), "meta_batch": meta_batch, "results": {}}
    try:
        for algorithm in ("maml", "fomaml"):
            for name, kernels in QUERY_PASSES.items():
                meta_learning.first_order_kernels = kernels  # what task_outcome wraps the query pass in
                timings = profile_call(lambda: meta_learning.meta_gradient(
                    network, params, batch, INNER, algorithm == "fomaml", vectorize=False), repeats)
                report["results"][f"{algorithm}, {name}"] = {k: v / meta_batch for k, v in timings.items()}
    finally:
        meta_learning.first_order_kernels = FUSED
    return report


def print_table(report: dict) -> None:
    print(f"5-way 1-shot, meta-batch {report['meta_batch']}, {report['threads']} threads; ms per task (share)")
    columns = [group for group, _ in GROUPS] + ["elementwise", "framework"]
    print(f"{'':32s} {'total':>7s} " + " ".join(f"{c:>17s}" for c in columns))
    for name, t in report["results"].items():
        cells = " ".join(f"{t[c]:8.1f} ({100 * t[c] / t['total']:4.1f}%)" for c in columns)
        print(f"{name:32s} {t['total']:7.1f} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--default-allocator", action="store_true", help="glibc's default malloc settings")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_meta_training.json")
    args = parser.parse_args()
    if not args.default_allocator:
        keep_freed_memory()
    report = run(args.meta_batch, args.repeats)
    report["allocator"] = "glibc default" if args.default_allocator else "keep_freed_memory"
    print_table(report)
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
