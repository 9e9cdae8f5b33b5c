"""Serving throughput under concurrency: C clients, each adapting its own task and classifying.

    python benchmarks/serve_throughput.py [--clients 1 4 16 64] [--requests 4]

Each client thread sends ``--requests`` requests of its own distinct 5-way 1-shot task (75
queries) to one shared ``FewShotModel`` (the Python API the web app calls). Reports completed
tasks/s and p50/p95 request latency per client count, and checks every answer equals what that
task gets alone. Also measures adapting a batch of same-shaped tasks in one ``vmap`` pass against
one at a time, the lever for batching concurrent requests. Writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from functools import partial
from pathlib import Path

import torch
from torch.func import vmap

import fewshot_serve
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.inner_loop import adapt, predict

ROOT = Path(__file__).resolve().parents[1]


def make_task(seed: int, ways: int, size: int, queries: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(ways, 1, size, size, generator=g), torch.arange(ways),
            torch.randn(queries, 1, size, size, generator=g))


def serve(model, task):
    xs, ys, xq = task
    return model.adapt_tensors(xs, ys, len(ys)).probabilities(xq)


def concurrency(model, clients: int, requests: int, ways: int, queries: int) -> dict:
    size = model.preprocessing.image_size
    tasks = [make_task(1000 + c, ways, size, queries) for c in range(clients)]
    alone = [serve(model, task) for task in tasks]
    latencies: list[float] = []
    mismatches = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        barrier.wait()
        for _ in range(requests):
            start = time.perf_counter()
            answer = serve(model, tasks[index])
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not torch.allclose(answer, alone[index], atol=1e-5):
                    mismatches.append(index)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"clients": clients, "tasks_per_s": len(latencies) / wall, "p50_ms": 1e3 * statistics.median(ordered),
            "p95_ms": 1e3 * ordered[round(0.95 * (len(ordered) - 1))], "mismatches": len(mismatches)}


def batched_adaptation(model, tasks: int, ways: int, queries: int, repeats: int) -> dict:
    """``tasks`` same-shaped tasks adapted in one vmap pass vs one after another (same answers)."""
    network, recipe = model.network, model.recipe
    size = model.preprocessing.image_size
    batch = [make_task(2000 + t, ways, size, queries) for t in range(tasks)]
    xs, ys, xq = (torch.stack(part) for part in zip(*batch))
    meta = {k: v.detach() for k, v in network.named_parameters()}

    def one(x_support, y_support, x_query, composable):
        start = network.task_parameters(meta, ways)
        params = adapt(network, start, x_support, y_support, recipe.inner_lrs, recipe.test_steps, True,
                       composable).params
        return predict(network, params, x_support, x_query).softmax(-1)

    vectorized = lambda: vmap(partial(one, composable=True))(xs, ys, xq)  # noqa: E731
    sequential = lambda: torch.stack([one(a, b, c, False) for a, b, c in zip(xs, ys, xq)])  # noqa: E731
    torch.testing.assert_close(vectorized(), sequential(), atol=1e-3, rtol=1e-3)  # float32, other summation order
    timings = {}
    for name, fn in (("vmap", vectorized), ("one_at_a_time", sequential)):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        timings[name] = tasks * repeats / (time.perf_counter() - start)
    return {"tasks": tasks, "vmap_tasks_per_s": timings["vmap"], "sequential_tasks_per_s": timings["one_at_a_time"],
            "speedup": timings["vmap"] / timings["one_at_a_time"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "omniglot-conv4-fomaml.safetensors")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=75)
    parser.add_argument("--batch-tasks", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_throughput.json")
    args = parser.parse_args()
    model = fewshot_serve.load(args.model, device=args.device)
    report = {"device": str(model.device), "threads": torch.get_num_threads(), "concurrency": [], "batching": None}
    print(f"device {model.device}, {torch.get_num_threads()} threads, {args.ways}-way 1-shot, {args.queries} queries")
    print(f"{'clients':>7s} {'tasks/s':>9s} {'p50 ms':>9s} {'p95 ms':>9s} {'wrong':>6s}")
    for clients in args.clients:
        row = concurrency(model, clients, args.requests, args.ways, args.queries)
        report["concurrency"].append(row)
        print(f"{clients:7d} {row['tasks_per_s']:9.2f} {row['p50_ms']:9.1f} {row['p95_ms']:9.1f} "
              f"{row['mismatches']:6d}")
    batching = batched_adaptation(model, args.batch_tasks, args.ways, args.queries, repeats=2)
    report["batching"] = batching
    print(f"\n{batching['tasks']} tasks adapted in one vmap pass: {batching['vmap_tasks_per_s']:.2f} tasks/s; "
          f"one at a time: {batching['sequential_tasks_per_s']:.2f} tasks/s; "
          f"vmap / sequential = {batching['speedup']:.2f}x")
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
