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
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

import fewshot_serve
from fewshot_serve.atomic import atomic_write_json
from fewshot_serve.networks import conv4
from fewshot_serve.networks.base import support_norm, using_first_order_kernels
from adapt_latency import QUERIES, SETTINGS, percentile, timed  # benchmarks/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]
POOL_FIRST = conv4.Conv4.head_input


def relu_first(self: conv4.Conv4, params: dict[str, torch.Tensor], x: torch.Tensor,
               n_ref: int | None = None) -> torch.Tensor:
    """``Conv4.head_input`` as it was: the textbook order, ReLU before pooling."""
    if x.device.type == "cpu" and using_first_order_kernels():
        x = x.to(memory_format=torch.channels_last)
    for i in range(len(self.blocks)):
        prefix = f"blocks.{i}."
        x = F.conv2d(x, params[prefix + "conv.weight"], params[prefix + "conv.bias"], padding=1)
        x = support_norm(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"], n_ref)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


VARIANTS = {"ReLU, then pool (before)": relu_first, "pool, then ReLU (now)": POOL_FIRST}


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    model = fewshot_serve.load(model_path, device="cpu")
    size, channels = model.recipe.network["image_size"], model.recipe.network["in_channels"]
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "model": model_path.name, "steps": model.recipe.test_steps, "settings": {}}
    generator = torch.Generator().manual_seed(0)
    try:
        for ways, shots in settings:
            xs = torch.randn(ways * shots, channels, size, size, generator=generator)
            ys = torch.arange(ways).repeat_interleave(shots)
            xq = torch.randn(QUERIES, channels, size, size, generator=generator)
            work = lambda: model.adapt_tensors(xs, ys, ways).probabilities(xq)  # noqa: E731
            answers = {}
            for variant, head_input in VARIANTS.items():
                conv4.Conv4.head_input = head_input
                answers[variant] = work()
            before, now = answers.values()
            torch.testing.assert_close(now, before, atol=1e-5, rtol=1e-4)
            times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            for _ in range(repeats):  # alternate, so drift in the machine's speed hits both alike
                for variant, head_input in VARIANTS.items():
                    conv4.Conv4.head_input = head_input
                    times[variant] += timed(work, repeats=1, warmup=1)
            report["settings"][f"{ways}-way {shots}-shot"] = {v: 1e3 * percentile(t, 0.5) for v, t in times.items()}
    finally:
        conv4.Conv4.head_input = POOL_FIRST
    return report


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
