"""What ``first_order_kernels`` buys serving: the fused norm, then channels-last, side by side.

    python benchmarks/first_order_kernels.py [--model models/omniglot-conv4-fomaml.safetensors] [--repeats 30]

For 5-way 1-shot, 5-way 5-shot and 20-way 1-shot, ``FewShotModel.adapt_tensors`` and the
classification of 75 queries, p50 over ``--repeats``, with the first-order steps' kernels:

* written-out norm, NCHW: what every path used before (and MAML's second order still uses);
* fused norm, NCHW: PyTorch's fused BatchNorm kernel;
* fused norm, channels-last: the default, Conv4's activations channels-last on CPU.

Contestants alternate within each repeat, on the same inputs, and are first checked to give the
same probabilities. Writes JSON.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from adapt_latency import QUERIES, SETTINGS, side_by_side  # benchmarks/ is this script's folder

from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.networks import conv4, norms

ROOT = Path(__file__).resolve().parents[1]
ON = norms.using_first_order_kernels
OFF = lambda: False  # noqa: E731
#: contestant -> (the norm's switch, Conv4's layout switch)
VARIANTS = {"written-out norm, NCHW": (OFF, OFF), "fused norm, NCHW": (ON, OFF), "fused norm, channels-last": (ON, ON)}


def switched(variant: str) -> None:
    norms.using_first_order_kernels, conv4.using_first_order_kernels = VARIANTS[variant]


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    switches = {variant: partial(switched, variant) for variant in VARIANTS}
    try:
        return side_by_side(model_path, repeats, settings, switches, reference="written-out norm, NCHW")
    finally:
        switched("fused norm, channels-last")


def print_table(report: dict) -> None:
    print(f"{report['model']}: {report['threads']} threads, {report['steps']} steps, adapt + classify {QUERIES} "
          f"queries, p50 ms (speed-up over the written-out norm in NCHW)")
    print(f"{'setting':15s}" + "".join(f"{variant:>30s}" for variant in VARIANTS))
    for setting, p50 in report["settings"].items():
        slowest = p50["written-out norm, NCHW"]
        print(f"{setting:15s}" + "".join(f"{f'{ms:.1f} ({slowest / ms:.2f}x)':>30s}" for ms in p50.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "omniglot-conv4-fomaml.safetensors")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "first_order_kernels.json")
    args = parser.parse_args()
    report = run(args.model, args.repeats)
    print_table(report)
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
