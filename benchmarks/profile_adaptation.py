"""Where adaptation time goes: torch.profiler's per-op self time, grouped, for each latency setting.

    python benchmarks/profile_adaptation.py [--model models/omniglot-conv4-fomaml.safetensors] [--repeats 20]

For each setting of ``adapt_latency.py`` (5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 75 queries)
the serving path is profiled in two halves, ``adapt`` (the inner loop and folding the classifier)
and ``classify`` (the frozen classifier on the queries). Ops are grouped into convolutions,
pooling, ReLU, reductions (means and variances), other elementwise arithmetic, and "framework":
the wall time no op accounts for (Python, autograd bookkeeping, dispatch). Prints a table of
milliseconds per call and shares, and writes JSON.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import fewshot_serve
from fewshot_serve.files.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ((5, 1), (5, 5), (20, 1))
QUERIES = 75
GROUPS = (
    ("convolution", ("convolution", "conv2d")),
    ("pooling", ("pool",)),
    ("relu", ("relu", "clamp_min", "threshold")),
    ("reduction", ("mean", "sum", "var", "std", "norm")),
    ("matmul", ("addmm", "mm", "linear", "bmm")),
)


def group_of(op: str) -> str:
    name = op.removeprefix("aten::")
    for group, needles in GROUPS:
        if any(needle in name for needle in needles):
            return group
    return "elementwise"


def profile_call(fn, repeats: int) -> dict[str, float]:
    """Milliseconds per call of ``fn``, in total and per op group (self CPU time of aten ops)."""
    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        wall = time.perf_counter() - started
    groups = {group: 0.0 for group, _ in GROUPS} | {"elementwise": 0.0}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            groups[group_of(event.key)] += event.self_cpu_time_total / 1e6
    timings = {group: 1e3 * seconds / repeats for group, seconds in groups.items()}
    timings["framework"] = max(0.0, 1e3 * wall / repeats - sum(timings.values()))
    timings["total"] = 1e3 * wall / repeats
    return timings


def run(model_path: Path, repeats: int, settings=SETTINGS) -> dict:
    model = fewshot_serve.load(model_path, device="cpu")
    size, channels = model.preprocessing.image_size, model.preprocessing.channels
    report = {"model": model_path.name, "threads": torch.get_num_threads(), "steps": model.recipe.test_steps,
              "settings": {}}
    generator = torch.Generator().manual_seed(0)
    for ways, shots in settings:
        xs = torch.randn(ways * shots, channels, size, size, generator=generator)
        ys = torch.arange(ways).repeat_interleave(shots)
        xq = torch.randn(QUERIES, channels, size, size, generator=generator)
        adapted = model.adapt_tensors(xs, ys, ways)
        report["settings"][f"{ways}-way {shots}-shot"] = {
            "adapt": profile_call(lambda: model.adapt_tensors(xs, ys, ways), repeats),
            "classify": profile_call(lambda: adapted.probabilities(xq), repeats),
        }
    return report


def print_table(report: dict) -> None:
    print(f"{report['model']}: {report['threads']} threads, {report['steps']} steps, {QUERIES} queries; "
          "ms per call (share of the half)")
    columns = [group for group, _ in GROUPS] + ["elementwise", "framework"]
    print(f"{'setting':16s} {'half':9s} {'total':>7s} " + " ".join(f"{c:>17s}" for c in columns))
    for setting, halves in report["settings"].items():
        for half, t in halves.items():
            cells = " ".join(f"{t[c]:8.1f} ({100 * t[c] / t['total']:4.1f}%)" for c in columns)
            print(f"{setting:16s} {half:9s} {t['total']:7.1f} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "omniglot-conv4-fomaml.safetensors")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_adaptation.json")
    args = parser.parse_args()
    report = run(args.model, args.repeats)
    print_table(report)
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
