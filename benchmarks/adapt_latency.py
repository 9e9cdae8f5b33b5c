"""Adaptation latency: load -> adapt -> classify, ours against the textbook baseline, peers and the FLOP bound.

    python benchmarks/adapt_latency.py [--model models/omniglot-conv4-fomaml.safetensors] [--repeats 50]
                                       [--shipped models/photos-resnet12.safetensors ...] [--shipped-only] [--bf16]

For 5-way 1-shot, 5-way 5-shot and 20-way 1-shot with 75 queries, at the file's test-time step
count, every contestant adapts the same weights on the same preprocessed inputs and classifies the
same queries. Prints p50/p95 per contestant, the ratios ours/peer and ours/bound, and writes JSON.

* ours: ``FewShotModel.adapt_tensors`` + ``AdaptedClassifier.probabilities`` (the serving path
  minus image decoding).
* textbook: deep-copy the module, ``torch.optim.SGD``, ``.backward()`` per step (the MAML tutorial).
* higher / learn2learn: run when importable (``pip install -r benchmarks/requirements-peers.txt``).
* bound: the analytic FLOPs of the work at this machine's measured peak float32 matmul FLOP/s.

The textbook loop and the peers run twice. First on our network's forward and its first-order
kernels (fused norm, channels-last, pooling before ReLU), so their ratios to ours measure the inner
loop and the classifier alone; then ("standard layers") on Conv4 as the tutorials build it, an
``nn.Sequential`` of ``nn.Conv2d``, ``nn.BatchNorm2d`` on batch statistics, ``nn.ReLU`` and
``nn.MaxPool2d`` in NCHW, holding the same weights: what their users run, so the ratios include
our layers too. Either way they classify the queries through our network's forward with their
adapted weights (normalization statistics from the support images, as serving does), so every
contestant must give ours' probabilities.

The shipped models (photos and handwriting: learned per-step learning rates, head-only inner loop,
Proto-MAML rows) have no textbook or peer counterpart that does the same work, so they are timed
alone, one after another in one run: 5-way 1-shot, 5-way 5-shot and 20-way 1-shot with 75 queries,
split into adaptation and classification, and (2 shots or more) the support set's own accuracy
estimate (``adapted.assessment()``, printed as a ratio to adaptation). On a CPU each runs with its
frozen part (the backbone) in torch and then in onnxruntime (``load(..., runtime=...)``; the ratio
is printed), and with ``--bf16`` also with ``load(..., bf16=True)`` where the device has native
bfloat16.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import fewshot_serve
from fewshot_serve.devices import bf16_available
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.networks import BN_EPS, Conv4, first_order_kernels

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ((5, 1), (5, 5), (20, 1))
QUERIES = 75


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def random_tasks(model: fewshot_serve.FewShotModel, settings, device: str = "cpu"):
    """For each (ways, shots) of ``settings``: random support images, their labels and ``QUERIES`` random
    queries, shaped for ``model`` (the same inputs on every call: seed 0)."""
    size, channels = model.preprocessing.image_size, model.preprocessing.channels
    generator = torch.Generator().manual_seed(0)
    for ways, shots in settings:
        xs = torch.randn(ways * shots, channels, size, size, generator=generator).to(device)
        ys = torch.arange(ways).repeat_interleave(shots).to(device)
        xq = torch.randn(QUERIES, channels, size, size, generator=generator).to(device)
        yield ways, shots, xs, ys, xq


def latency(times: list[float]) -> dict[str, float]:
    """p50 and p95 of ``times`` (seconds) in milliseconds, as every benchmark here reports them."""
    return {"p50_ms": 1e3 * percentile(times, 0.5), "p95_ms": 1e3 * percentile(times, 0.95)}


def side_by_side(model_path: Path, repeats: int, settings, variants: dict[str, Callable[[], None]],
                 reference: str) -> dict:
    """p50 ms of ``FewShotModel.adapt_tensors`` plus the classification of ``QUERIES`` queries, per setting
    and per variant of the serving path (``variants``: name -> the call that switches it on).

    Variants alternate within each repeat, on the same inputs, so drift in the machine's speed hits
    all alike; each is first checked to give ``reference``'s probabilities. The caller switches its
    default back afterwards.
    """
    model = fewshot_serve.load(model_path, device="cpu")
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "model": model_path.name, "steps": model.recipe.test_steps, "settings": {}}
    for ways, shots, xs, ys, xq in random_tasks(model, settings):
        work = lambda: model.adapt_tensors(xs, ys, ways).probabilities(xq)  # noqa: E731
        answers = {}
        for variant, switch_on in variants.items():
            switch_on()
            answers[variant] = work()
        for variant, answer in answers.items():
            torch.testing.assert_close(answer, answers[reference], atol=1e-5, rtol=1e-4, msg=variant)
        times: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(repeats):
            for variant, switch_on in variants.items():
                switch_on()
                times[variant] += timed(work, repeats=1, warmup=1)
        report["settings"][f"{ways}-way {shots}-shot"] = {v: 1e3 * percentile(t, 0.5) for v, t in times.items()}
    return report


def before_and_now(model_path: Path, repeats: int, settings, owner: object, attribute: str,
                   variants: dict[str, object]) -> dict:
    """:func:`side_by_side` of the forms of ``owner.attribute`` in ``variants`` (name -> form; the first, the
    former one, is the reference), then ``owner.attribute`` restored to the form it had on entry."""
    current = getattr(owner, attribute)
    switches = {name: functools.partial(setattr, owner, attribute, form) for name, form in variants.items()}
    try:
        return side_by_side(model_path, repeats, settings, switches, reference=next(iter(variants)))
    finally:
        setattr(owner, attribute, current)


def print_before_and_now(report: dict, speed_up: str) -> None:
    """:func:`before_and_now`'s p50 per setting, with the second form's speed-up over the first."""
    variants = list(next(iter(report["settings"].values())))
    width = max(map(len, variants)) + 4
    print(f"{report['model']}: {report['threads']} threads, {report['steps']} steps, adapt + classify {QUERIES} "
          f"queries, p50 ms ({speed_up})")
    print(f"{'setting':15s}" + "".join(f"{variant:>{width}s}" for variant in variants))
    for setting, p50 in report["settings"].items():
        before, now = p50.values()
        print(f"{setting:15s}{before:>{width}.1f}{f'{now:.1f} ({before / now:.2f}x)':>{width}s}")


def before_and_now_main(description: str, run: Callable[[Path, int], dict], print_table: Callable[[dict], None],
                        default_model: Path, default_repeats: int, results_prefix: str) -> None:
    """The command line of a before-and-now benchmark: ``--model``, ``--repeats``, ``--out`` (JSON; default
    ``benchmarks/results/<results_prefix>_<model>.json``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON results (default: benchmarks/results/{results_prefix}_<model>.json)")
    args = parser.parse_args()
    report = run(args.model, args.repeats)
    print_table(report)
    atomic_write_json(args.out or ROOT / "benchmarks" / "results" / f"{results_prefix}_{args.model.stem}.json",
                      report)


@functools.cache
def standard_conv4(network: Conv4) -> torch.nn.Sequential:
    """``network`` (weights included) as the MAML tutorials build Conv4: standard layers, each block
    conv, BatchNorm on the batch's statistics, ReLU, then max-pooling, in NCHW. Its parameters come in
    ``network``'s order. Built once per network; the peers deep-copy it per task."""
    layers: list[torch.nn.Module] = []
    for block in network.blocks:
        conv = torch.nn.Conv2d(block.conv.in_channels, block.conv.out_channels, kernel_size=3, padding=1)
        norm = torch.nn.BatchNorm2d(block.conv.out_channels, eps=BN_EPS, track_running_stats=False)
        for copy_, source in ((conv, block.conv), (norm, block.norm)):
            copy_.load_state_dict(source.state_dict())
        layers += [conv, norm, torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    head = torch.nn.Linear(network.feature_dim, 1)
    head.load_state_dict(network.head.state_dict())
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), head)


def per_task_copy(network: Conv4, ways: int, standard: bool = False) -> torch.nn.Module:
    """A module copy whose shared head row is repeated once per class: the peers' starting point
    (``standard``: a copy of :func:`standard_conv4`)."""
    learner = copy.deepcopy(standard_conv4(network) if standard else network)
    head = learner[-1] if standard else learner.head
    head.weight = torch.nn.Parameter(head.weight.detach().repeat(ways, 1))
    head.bias = torch.nn.Parameter(head.bias.detach().repeat(ways))
    return learner


def classify(network: Conv4, adapted, xs, xq) -> torch.Tensor:
    """Query probabilities of the ``adapted`` parameters (in ``network``'s order) through our network's
    forward, normalization statistics from the support images: the serving semantics every contestant
    is checked against."""
    params = dict(zip((name for name, _ in network.named_parameters()), adapted))
    with torch.no_grad():
        return network.apply_params(params, torch.cat([xs, xq]), len(xs))[len(xs):].softmax(-1)


def peer_kernels(standard: bool):
    """Our first-order kernels for a peer on our network; nothing for one on standard layers."""
    return contextlib.nullcontext() if standard else first_order_kernels()


def textbook(network: Conv4, ways: int, lrs: list[float], steps: int, xs, ys, xq,
             standard: bool = False) -> torch.Tensor:
    """The tutorial way: a deep copy per task, an SGD optimizer, backward() per step."""
    learner = per_task_copy(network, ways, standard)
    for param in learner.parameters():
        param.requires_grad_(True)
    optimizer = torch.optim.SGD(learner.parameters(), lr=lrs[0])
    with peer_kernels(standard):
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lrs[min(step, len(lrs) - 1)]
            optimizer.zero_grad()
            F.cross_entropy(learner(xs), ys).backward()
            optimizer.step()
    return classify(network, learner.parameters(), xs, xq)


def conv4_flops(network: Conv4, n_images: int) -> float:
    """Multiply-adds x 2 of one forward pass of Conv4 over ``n_images`` (convolutions and head)."""
    flops, side, channels = 0.0, network.image_size, network.in_channels
    for _ in range(4):
        flops += 2 * side * side * network.filters * channels * 9
        side, channels = side // 2, network.filters
    return n_images * (flops + 2 * network.feature_dim)


def measured_peak_flops(seconds: float = 1.0) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    timed(lambda: a @ b, repeats=3)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return count * 2 * 1024**3 / (time.perf_counter() - start)


def optional_peers() -> dict[str, Callable]:
    peers: dict[str, Callable] = {}
    try:
        import higher  # noqa: F401

        def with_higher(network, ways, lrs, steps, xs, ys, xq, standard=False):
            learner = per_task_copy(network, ways, standard)
            optimizer = torch.optim.SGD(learner.parameters(), lr=lrs[0])
            with higher.innerloop_ctx(learner, optimizer, track_higher_grads=False) as (fmodel, diffopt), \
                    peer_kernels(standard):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(xs), ys))
                return classify(network, fmodel.fast_params, xs, xq)

        peers["higher"] = with_higher
    except ImportError:
        pass
    try:
        import learn2learn

        def with_learn2learn(network, ways, lrs, steps, xs, ys, xq, standard=False):
            learner = per_task_copy(network, ways, standard)
            clone = learn2learn.algorithms.MAML(learner, lr=lrs[0], first_order=True).clone()
            with peer_kernels(standard):
                for _ in range(steps):
                    clone.adapt(F.cross_entropy(clone(xs), ys))
            return classify(network, clone.parameters(), xs, xq)

        peers["learn2learn"] = with_learn2learn
    except ImportError:
        pass
    return peers


def run(model_path: Path, repeats: int, device: str, settings=SETTINGS) -> dict:
    model = fewshot_serve.load(model_path, device=device)
    model.recipe.probability_calibration = {}  # as the peers: a plain softmax (the temperature is one division)
    network, recipe = model.network, model.recipe
    if network.lr_steps or network.norm_states:
        raise ValueError(f"{model_path} uses MAML++ options, which the peers' plain SGD loops cannot reproduce; "
                         "benchmark a model without them (the default, models/omniglot-conv4-fomaml.safetensors)")
    steps, lrs = recipe.test_steps, list(recipe.inner_lrs)
    peak = measured_peak_flops() if device == "cpu" else None
    peers = {"textbook": textbook, **optional_peers()}
    peers.update({f"{name}, standard layers": functools.partial(peer, standard=True) for name, peer in peers.items()})
    report = {"machine": platform.processor() or platform.machine(), "device": device,
              "threads": torch.get_num_threads(), "steps": steps, "peak_matmul_gflops": peak and peak / 1e9,
              "settings": {}}
    for ways, shots, xs, ys, xq in random_tasks(model, settings, device):
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def ours():
            probabilities = model.adapt_tensors(xs, ys, ways).probabilities(xq)
            sync()
            return probabilities

        reference = ours()
        row = {"ours": timed(ours, repeats)}
        for name, peer in peers.items():
            def call(peer=peer):
                result = peer(network, ways, lrs, steps, xs, ys, xq)
                sync()
                return result
            torch.testing.assert_close(call(), reference, atol=1e-4, rtol=1e-3)  # same work, same answer
            row[name] = timed(call, repeats)
        # forward + backward (~3x forward) per step on the support, then one forward on support + queries
        flops = steps * 3 * conv4_flops(network, len(xs)) + conv4_flops(network, len(xs) + QUERIES)
        entry = {name: latency(t) for name, t in row.items()}
        entry["gflop"] = flops / 1e9
        if peak:
            entry["bound_ms"] = 1e3 * flops / peak
        report["settings"][f"{ways}-way {shots}-shot"] = entry
    return report


def run_alone(model_path: Path, repeats: int, device: str, settings=((5, 1), (5, 5), (20, 1)), bf16: bool = False,
              runtime: str = "torch") -> dict:
    """p50/p95 of adapting a model and classifying 75 queries, and of each half."""
    model = fewshot_serve.load(model_path, device=device, bf16=bf16, runtime=runtime)
    report = {"model": model_path.name, "device": device, "threads": torch.get_num_threads(),
              "steps": model.recipe.test_steps, "bf16": model.bf16, "runtime": runtime, "settings": {}}
    for ways, shots, xs, ys, xq in random_tasks(model, settings, device):
        adapted = model.adapt_tensors(xs, ys, ways)
        times = {"adapt + classify": timed(lambda: model.adapt_tensors(xs, ys, ways).probabilities(xq), repeats),
                 "adapt": timed(lambda: model.adapt_tensors(xs, ys, ways), repeats),
                 "classify": timed(lambda: adapted.probabilities(xq), repeats)}
        if shots > 1:  # held-out folds of the support set (a 1-shot set has nothing to hold out)
            times["assessment"] = timed(adapted.assessment, repeats)
        entry = {name: latency(t) for name, t in times.items()}
        if shots > 1:
            entry["assessment / adapt"] = entry["assessment"]["p50_ms"] / entry["adapt"]["p50_ms"]
        report["settings"][f"{ways}-way {shots}-shot"] = entry
    return report


def print_alone_table(report: dict) -> None:
    print(f"\nmodel {report['model']}: device {report['device']}, {report['threads']} threads, "
          f"{report['steps']} steps, {QUERIES} queries, frozen part in {report['runtime']}"
          + (", bfloat16" if report.get("bf16") else ""))
    for setting, entry in report["settings"].items():
        print(f"  {setting}: " + "   ".join(f"{name} p50 {t['p50_ms']:.1f} ms / p95 {t['p95_ms']:.1f} ms"
                                            if isinstance(t, dict) else f"{name} {t:.2f}x"
                                            for name, t in entry.items()))


def shipped_variants(path: Path, device: str, bf16: bool) -> list[tuple[str, bool]]:
    """(runtime, bf16) pairs to time a shipped model with on ``device``: torch float32 first."""
    variants = [("torch", False)]
    if device == "cpu" and fewshot_serve.load(path, device=device, runtime="torch").network.has_per_image_frozen_part:
        variants.append(("onnxruntime", False))
    if bf16 and bf16_available(torch.device(device)):
        variants.append(("torch", True))
    return variants


def print_ratios(baseline: dict, other: dict) -> None:
    """p50 of the torch float32 run over ``other``'s, per setting and part."""
    name = other["runtime"] + (" bfloat16" if other["bf16"] else "")
    for setting, entry in other["settings"].items():
        ratios = "   ".join(f"{part} {baseline['settings'][setting][part]['p50_ms'] / t['p50_ms']:.2f}x"
                           for part, t in entry.items() if isinstance(t, dict))
        print(f"  {setting}: torch float32 / {name}: {ratios}")


def print_table(report: dict) -> None:
    print(f"device {report['device']}, {report['threads']} threads, {report['steps']} steps, {QUERIES} queries"
          + (f", peak matmul {report['peak_matmul_gflops']:.0f} GFLOP/s" if report["peak_matmul_gflops"] else ""))
    for setting, entry in report["settings"].items():
        ours = entry["ours"]["p50_ms"]
        print(f"\n{setting}: {entry['gflop']:.2f} GFLOP of work")
        for name, times in entry.items():
            if isinstance(times, dict):
                ratio = "" if name == "ours" else f"   {name} / ours = {times['p50_ms'] / ours:.2f}x"
                print(f"  {name:26s} p50 {times['p50_ms']:8.2f} ms   p95 {times['p95_ms']:8.2f} ms{ratio}")
        if "bound_ms" in entry:
            print(f"  {'FLOP bound':26s}     {entry['bound_ms']:8.2f} ms          "
                  f"ours / bound = {ours / entry['bound_ms']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "omniglot-conv4-fomaml.safetensors",
                        help="a model without MAML++ options, which the peers' plain SGD loops can adapt too")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: benchmarks/results/"
                        "adapt_latency.json, or adapt_latency_shipped.json with --shipped-only, so neither run "
                        "overwrites the other's)")
    parser.add_argument("--shipped", type=Path, nargs="*",
                        default=[ROOT / "models" / name for name in ("photos-efficientnet-lite0.safetensors",
                                                                    "photos-resnet12.safetensors",
                                                                    "omniglot-resnet12.safetensors")],
                        help="also time these models alone (those absent are skipped)")
    parser.add_argument("--shipped-only", action="store_true", help="time only the --shipped models")
    parser.add_argument("--bf16", action="store_true",
                        help="also time each shipped model with bf16=True (where the device has native bfloat16)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    reports = [] if args.shipped_only else [run(args.model, args.repeats, device)
                                          for device in devices]
    for report in reports:
        print_table(report)
    for path in (p for p in args.shipped if p.exists()):
        for device in devices:
            runs = [run_alone(path, args.repeats, device, bf16=bf16, runtime=runtime)
                    for runtime, bf16 in shipped_variants(path, device, args.bf16)]
            for report in runs:
                print_alone_table(report)
            for report in runs[1:]:
                print_ratios(runs[0], report)
            reports += runs
    results = ROOT / "benchmarks" / "results"
    default = results / ("adapt_latency_shipped.json" if args.shipped_only else "adapt_latency.json")
    atomic_write_json(args.out or default, reports)


if __name__ == "__main__":
    main()
