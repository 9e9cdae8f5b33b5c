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

from pathlib import Path

import torch
import torch.nn.functional as F
from adapt_latency import (  # benchmarks/ is this script's folder
    ROOT,
    SETTINGS,
    before_and_now,
    before_and_now_main,
    print_before_and_now,
)

from fewshot_serve.networks.resnet12 import LEAK, FrozenBlock

IN_PLACE = FrozenBlock.forward


def into_fresh_tensors(self: FrozenBlock, x: torch.Tensor) -> torch.Tensor:
    """``FrozenBlock.forward`` as it was."""
    h = F.leaky_relu(self.conv1(x), LEAK)
    h = F.leaky_relu(self.conv2(h), LEAK)
    return F.max_pool2d(F.leaky_relu(self.conv3(h) + self.shortcut(x), LEAK), 2)


VARIANTS = {"fresh tensors (before)": into_fresh_tensors, "in place (now)": IN_PLACE}


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    return before_and_now(model_path, repeats, settings, FrozenBlock, "forward", VARIANTS)


def print_table(report: dict) -> None:
    print_before_and_now(report, "speed-up in place")


if __name__ == "__main__":
    before_and_now_main(__doc__, run, print_table, ROOT / "models" / "photos-resnet12.safetensors", 20,
                        "inplace_activations")
