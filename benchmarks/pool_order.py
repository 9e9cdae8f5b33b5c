"""Conv4's block order in adaptation: conv, norm, pool, ReLU (now) against conv, norm, ReLU, pool (before).

    python benchmarks/pool_order.py [--model models/omniglot-conv4-fomaml.safetensors] [--repeats 30]

ReLU is monotonic, so it commutes with max-pooling: pooling first gives the same function, and the
ReLU and its backward then touch a quarter of the values. For 5-way 1-shot, 5-way 5-shot and
20-way 1-shot, ``FewShotModel.adapt_tensors`` and the classification of 75 queries, p50 over
``--repeats``; the two orders alternate within each repeat, on the same inputs, and are first
checked to give the same probabilities. Writes JSON.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot_serve.atomic import atomic_write_json
from fewshot_serve.networks import conv4
from adapt_latency import QUERIES, SETTINGS, side_by_side  # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]
POOL_FIRST = conv4.relu_and_pool


def relu_then_pool(x: torch.Tensor) -> torch.Tensor:
    """``conv4.relu_and_pool`` as it was: the textbook order."""
    return F.max_pool2d(F.relu(x), 2)


VARIANTS = {"ReLU, then pool (before)": relu_then_pool, "pool, then ReLU (now)": POOL_FIRST}


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    switches = {variant: partial(setattr, conv4, "relu_and_pool", order) for variant, order in VARIANTS.items()}
    try:
        return side_by_side(model_path, repeats, settings, switches, reference="ReLU, then pool (before)")
    finally:
        conv4.relu_and_pool = POOL_FIRST


def print_table(report: dict) -> None:
    print(f"{report['model']}: {report['threads']} threads, {report['steps']} steps, adapt + classify {QUERIES} "
          f"queries, p50 ms (speed-up of pooling first)")
    print(f"{'setting':15s}" + "".join(f"{variant:>28s}" for variant in VARIANTS))
    for setting, p50 in report["settings"].items():
        before, now = p50.values()
        print(f"{setting:15s}{before:>28.1f}{f'{now:.1f} ({before / now:.2f}x)':>28s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "omniglot-conv4-fomaml.safetensors")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: benchmarks/results/pool_order_<model>.json)")
    args = parser.parse_args()
    report = run(args.model, args.repeats)
    print_table(report)
    atomic_write_json(args.out or ROOT / "benchmarks" / "results" / f"pool_order_{args.model.stem}.json", report)


if __name__ == "__main__":
    main()
