"""Conv4's block order in adaptation: conv, norm, pool, ReLU (now) against conv, norm, ReLU, pool (before).

    python benchmarks/pool_order.py [--model models/omniglot-conv4-fomaml.safetensors] [--repeats 30]

ReLU is monotonic, so it commutes with max-pooling: pooling first gives the same function, and the
ReLU and its backward then touch a quarter of the values. For 5-way 1-shot, 5-way 5-shot and
20-way 1-shot, ``FewShotModel.adapt_tensors`` and the classification of 75 queries, p50 over
``--repeats``; the two orders alternate within each repeat, on the same inputs, and are first
checked to give the same probabilities. Writes JSON.
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

from fewshot_serve.networks import conv4

POOL_FIRST = conv4.relu_and_pool


def relu_then_pool(x: torch.Tensor) -> torch.Tensor:
    """``conv4.relu_and_pool`` as it was: the textbook order."""
    return F.max_pool2d(F.relu(x), 2)


VARIANTS = {"ReLU, then pool (before)": relu_then_pool, "pool, then ReLU (now)": POOL_FIRST}


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    return before_and_now(model_path, repeats, settings, conv4, "relu_and_pool", VARIANTS)


def print_table(report: dict) -> None:
    print_before_and_now(report, "speed-up of pooling first")


if __name__ == "__main__":
    before_and_now_main(__doc__, run, print_table, ROOT / "models" / "omniglot-conv4-fomaml.safetensors", 30,
                        "pool_order")
