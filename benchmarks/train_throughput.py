"""Meta-training throughput: tasks/s and peak memory per algorithm, ours (vmap and loop) against higher.

    python benchmarks/train_throughput.py [--meta-batch 32] [--repeats 3] [--settings 5x1 20x1] [--rounds 3]

Every contestant computes the outer update of the same Conv4 on the same Omniglot-shaped meta-batch
(28x28 grayscale, 15 queries per class, 2 inner steps at lr 0.4). ``higher`` runs twice, as in
``adapt_latency.py``:

* "higher-standard", as its users run it: inner steps and query pass on Conv4 as the tutorials
  build it from standard layers, the query batch normalized with its own statistics (as in
  higher's MAML example). For the check, its query loss goes through our forward instead
  (support statistics, as ours), so that it must give our meta-gradient.
* "higher", on our network's forward, with our fused kernels wherever ours uses them (its
  first-order inner steps and its query pass): what is left between it and ours is the loop.

Every contestant is first checked to produce the same meta-gradient (or Reptile displacement) as
ours. Each runs in a fresh subprocess, so its peak resident memory (CPU) or peak allocated memory
(CUDA) is its own, with the allocator setting ``fewshot-serve`` itself runs under
(:func:`fewshot_serve.serving.allocator.keep_freed_memory`; ``--default-allocator``: glibc's default), the
same for every contestant, so that the ratios compare the code alone. Writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from adapt_latency import peer_kernels, per_task_copy  # benchmarks/ is this script's folder

from fewshot_serve.data.episodes import TaskBatch
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.inner_loop import InnerLoop
from fewshot_serve.networks import Conv4
from fewshot_serve.serving.allocator import keep_freed_memory
from fewshot_serve.training.meta_learning import meta_gradient, reptile_displacement

ROOT = Path(__file__).resolve().parents[1]
INNER = InnerLoop(inner_lrs=(0.4,), train_steps=2, test_steps=2)  # with one step a shared head row moves alone
CONTESTANTS = ("ours-vmap", "ours-loop", "higher", "higher-standard")


def make_batch(ways: int, shots: int, queries: int, tasks: int, device: str, size: int) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = lambda per: torch.arange(ways).repeat_interleave(per).repeat(tasks, 1).to(device)  # noqa: E731
    return TaskBatch(torch.randn(tasks, ways * shots, 1, size, size, generator=g).to(device), labels(shots),
                     torch.randn(tasks, ways * queries, 1, size, size, generator=g).to(device), labels(queries), ways)


def higher_update(network: Conv4, batch: TaskBatch, algorithm: str, standard: bool = False,
                  checked: bool = False) -> dict[str, torch.Tensor]:
    """The same outer update written the `higher` way: a module copy with an expanded head per task
    (``standard``: of the tutorials' Conv4, :func:`adapt_latency.standard_conv4`, whose query pass
    normalizes with the query batch's statistics unless ``checked``)."""
    import higher

    meta = copy.deepcopy(network)
    names = [name for name, _ in meta.named_parameters()]
    totals = {k: torch.zeros_like(v) for k, v in meta.named_parameters()}
    for xs, ys, xq, yq in zip(*batch[:4]):
        learner = per_task_copy(network if standard else meta, batch.ways, standard)
        optimizer = torch.optim.SGD(learner.parameters(), lr=INNER.inner_lrs[0])
        with higher.innerloop_ctx(learner, optimizer, copy_initial_weights=False,
                                  track_higher_grads=algorithm == "maml") as (fmodel, diffopt):
            # on our network, our kernels wherever ours uses them: first-order steps and the query pass
            with peer_kernels(standard) if algorithm != "maml" else contextlib.nullcontext():
                for _ in range(INNER.train_steps):
                    diffopt.step(F.cross_entropy(fmodel(xs), ys))
            if standard and not checked:
                loss = F.cross_entropy(fmodel(xq), yq)
            else:
                with peer_kernels(standard):
                    adapted = dict(zip(names, fmodel.fast_params))
                    loss = F.cross_entropy(meta.apply_params(adapted, torch.cat([xs, xq]), len(xs))[len(xs):], yq)
            grads = torch.autograd.grad(loss, fmodel.parameters(time=0) if algorithm == "maml" else fmodel.parameters())
        for (key, total), grad in zip(totals.items(), grads):
            total += (grad.sum(0, keepdim=True) if key.startswith("head") else grad) / len(batch.x_support)
    return totals


def update(contestant: str, algorithm: str, network: Conv4, batch: TaskBatch,
           checked: bool = False) -> dict[str, torch.Tensor]:
    """One outer update's direction; ``checked``: computed as the check against ours needs it."""
    params = dict(network.named_parameters())
    if contestant.startswith("higher"):
        return higher_update(network, batch, algorithm, standard=contestant == "higher-standard", checked=checked)
    vectorize = contestant == "ours-vmap"
    if algorithm == "reptile":
        return reptile_displacement(network, params, batch, INNER, vectorize)[0]
    return meta_gradient(network, params, batch, INNER, algorithm == "fomaml", vectorize)[0]


def measure(contestant: str, algorithm: str, ways: int, shots: int, queries: int, tasks: int, repeats: int,
            device: str, size: int) -> dict:
    torch.manual_seed(0)
    network = Conv4(1, 64, size).to(device)
    with torch.no_grad():
        network.head.weight.normal_(0, 0.01)
    batch = make_batch(ways, shots, queries, tasks, device, size)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    result = update(contestant, algorithm, network, batch, checked=True)
    for _ in range(3):  # warm-up: oneDNN primitives and the allocator's memory settle after a few calls
        update(contestant, algorithm, network, batch)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        update(contestant, algorithm, network, batch)
    sync()
    seconds = (time.perf_counter() - start) / repeats
    peak = (torch.cuda.max_memory_allocated() if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    reference = update("ours-loop", algorithm, network, batch)  # after the peak was read
    with torch.no_grad():  # compared as values: MAML's gradients carry a graph
        scale = max(float(v.abs().max()) for v in reference.values())  # relative to the largest gradient entry
        error = max(float((result[k] - reference[k]).abs().max()) for k in reference) / scale
    return {"tasks_per_s": tasks / seconds, "peak_mb": peak / 2**20, "max_relative_difference": error}


def run_isolated(contestant: str, algorithm: str, setting: str, args: argparse.Namespace) -> dict | None:
    command = [sys.executable, __file__, "--one", contestant, algorithm, setting, "--meta-batch", str(args.meta_batch),
               "--queries", str(args.queries), "--repeats", str(args.repeats), "--device", args.device,
               "--image-size", str(args.image_size)] + (["--default-allocator"] if args.default_allocator else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["5x1", "20x1"], help="WAYSxSHOTS")
    parser.add_argument("--algorithms", nargs="+", default=["maml", "fomaml", "reptile"])
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contestants", nargs="+", default=list(CONTESTANTS), choices=CONTESTANTS)
    parser.add_argument("--rounds", type=int, default=1, help="run every contestant this many times, alternating")
    parser.add_argument("--default-allocator", action="store_true",
                        help="run every contestant under glibc's default malloc settings, not fewshot-serve's")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json")
    parser.add_argument("--one", nargs=3, metavar=("CONTESTANT", "ALGORITHM", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if not args.default_allocator:
            keep_freed_memory()
        contestant, algorithm, setting = args.one
        ways, shots = map(int, setting.split("x"))
        print(json.dumps(measure(contestant, algorithm, ways, shots, args.queries, args.meta_batch, args.repeats,
                                 args.device, args.image_size)))
        return
    contestants = tuple(args.contestants)
    try:
        import higher  # noqa: F401
    except ImportError:
        contestants = tuple(c for c in contestants if not c.startswith("higher"))
        print("higher is not installed (pip install -r benchmarks/requirements-peers.txt): comparing ours only")
    report = {"device": args.device, "threads": torch.get_num_threads(), "meta_batch": args.meta_batch,
              "allocator": "glibc default" if args.default_allocator else "keep_freed_memory",
              "queries": args.queries, "rounds": args.rounds, "results": {}}
    print(f"device {args.device}, meta-batch {args.meta_batch}, {args.queries} queries/class, "
          f"{INNER.train_steps} inner steps, "
          f"allocator: {report['allocator']}, {args.rounds} round(s), median tasks/s")
    print(f"{'setting':8s} {'algorithm':8s} {'contestant':15s} {'tasks/s':>9s} {'peak MB':>9s} {'rel. diff':>10s}  "
          "ours-loop / it")
    for setting in args.settings:
        for algorithm in args.algorithms:
            # higher has no Reptile
            entrants = [c for c in contestants if not (c.startswith("higher") and algorithm == "reptile")]
            runs: dict[str, list[dict]] = {c: [] for c in entrants}
            for _ in range(args.rounds):  # contestants alternate, so a slow spell of the machine hits them alike
                for contestant in entrants:
                    runs[contestant].append(run_isolated(contestant, algorithm, setting, args))
            rows = {}
            for contestant, results in runs.items():
                failed = [r for r in results if "error" in r]
                if failed:
                    print(f"{setting:8s} {algorithm:8s} {contestant:15s} failed: {failed[0]['error']}")
                    continue
                rows[contestant] = {"tasks_per_s": [r["tasks_per_s"] for r in results],
                                    "peak_mb": max(r["peak_mb"] for r in results),
                                    "max_relative_difference": max(r["max_relative_difference"] for r in results)}
                ratio = float("nan")
                if "ours-loop" in rows:  # per round, ours-loop's rate over this contestant's, then the median
                    ratio = statistics.median(a / b for a, b in zip(rows["ours-loop"]["tasks_per_s"],
                                                                    rows[contestant]["tasks_per_s"]))
                row = rows[contestant]
                print(f"{setting:8s} {algorithm:8s} {contestant:15s} {statistics.median(row['tasks_per_s']):9.2f} "
                      f"{row['peak_mb']:9.0f} {row['max_relative_difference']:10.1e}  {ratio:.2f}x")
            report["results"][f"{setting} {algorithm}"] = rows
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
