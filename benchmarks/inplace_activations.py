"""The frozen ResNet-12's activations in place (now) against into fresh tensors (before), in serving.

    python benchmarks/inplace_activations.py [--model models/photos-resnet12.safetensors] [--repeats 20]

``FrozenBlock`` (the adapted classifier's residual block, norms folded into its convolutions) used
to compute each leaky ReLU and the residual sum into new tensors; it now writes them into the
convolution's own output, which nothing else reads. The same arithmetic, without allocating and
first touching a fresh activation-sized buffer per operation. For 5-way 1-shot, 5-way 5-shot and
20-way 1-shot, ``FewShotModel.adapt_tensors`` plus the classification of 75 queries, p50 over
``--repeats``; the two forms alternate within each repeat, on the same inputs, and are first
checked to give the same probabilities. Only the classification runs the frozen block, so the
ratio is diluted by the adaptation's share. Writes JSON.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot_serve.atomic import atomic_write_json
from fewshot_serve.networks.resnet12 import LEAK, FrozenBlock
from adapt_latency import QUERIES, SETTINGS, side_by_side  # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]
IN_PLACE = FrozenBlock.forward


def into_fresh_tensors(self: FrozenBlock, x: torch.Tensor) -> torch.Tensor:
    """``FrozenBlock.forward`` as it was."""
    h = F.leaky_relu(self.conv1(x), LEAK)
    h = F.leaky_relu(self.conv2(h), LEAK)
    return F.max_pool2d(F.leaky_relu(self.conv3(h) + self.shortcut(x), LEAK), 2)


VARIANTS = {"fresh tensors (before)": into_fresh_tensors, "in place (now)": IN_PLACE}


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    switches = {variant: partial(setattr, FrozenBlock, "forward", form) for variant, form in VARIANTS.items()}
    try:
        return side_by_side(model_path, repeats, settings, switches, reference="fresh tensors (before)")
    finally:
        FrozenBlock.forward = IN_PLACE


def print_table(report: dict) -> None:
    print(f"{report['model']}: {report['threads']} threads, {report['steps']} steps, adapt + classify {QUERIES} "
          f"queries, p50 ms (speed-up in place)")
    print(f"{'setting':15s}" + "".join(f"{variant:>26s}" for variant in VARIANTS))
    for setting, p50 in report["settings"].items():
        before, now = p50.values()
        print(f"{setting:15s}{before:>26.1f}{f'{now:.1f} ({before / now:.2f}x)':>26s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "photos-resnet12.safetensors")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: benchmarks/results/inplace_activations_<model>.json)")
    args = parser.parse_args()
    report = run(args.model, args.repeats)
    print_table(report)
    atomic_write_json(args.out or ROOT / "benchmarks" / "results" / f"inplace_activations_{args.model.stem}.json",
                      report)


if __name__ == "__main__":
    main()
