"""Classifying with the adapted classifier: torch (the serving path) against onnxruntime, side by side.

    python benchmarks/onnx_classify.py [--models models/omniglot-conv4-fomaml.safetensors ...] [--repeats 30]

For each model, a 5-way 5-shot task of random inputs is adapted once through the serving API;
its frozen classifier then classifies 75 queries with torch (``AdaptedClassifier.probabilities``,
float32) and with onnxruntime on the ONNX export of the very same classifier (an
``InferenceSession`` on the CPU provider, as ``OnnxClassifier`` opens, but given as many intra-op
threads as torch uses). Both are first checked to give the same
probabilities (1e-4); then they alternate within each repeat. Prints p50 / p95, the ratio, what
handing a task over to onnxruntime costs (export + session load, p50 of 3) and after how many
queries that cost is paid back, and writes JSON. The question it answers: should serving hand
classification to onnxruntime?
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from adapt_latency import QUERIES, latency, percentile, timed  # benchmarks/ is this script's folder

import fewshot_serve
from fewshot_serve.files.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("omniglot-conv4-fomaml.safetensors", "omniglot-conv4.safetensors", "photos-resnet12.safetensors")
CONTESTANTS = ("torch", "onnxruntime")


def run(model_paths: list[Path], repeats: int, ways: int = 5, shots: int = 5) -> dict:
    import onnxruntime

    threads = torch.get_num_threads()
    report = {"machine": platform.processor() or platform.machine(), "threads": threads, "queries": QUERIES,
              "setting": f"{ways}-way {shots}-shot", "onnxruntime": onnxruntime.__version__, "models": {}}
    generator = torch.Generator().manual_seed(0)
    for path in model_paths:
        model = fewshot_serve.load(path, device="cpu")
        size, channels = model.preprocessing.image_size, model.preprocessing.channels
        xs = torch.randn(ways * shots, channels, size, size, generator=generator)
        xq = torch.randn(QUERIES, channels, size, size, generator=generator)
        adapted = model.adapt_tensors(xs, torch.arange(ways).repeat_interleave(shots), ways)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1

        def handed_over() -> onnxruntime.InferenceSession:
            """What serving would pay per adapted task to classify with onnxruntime: export, then load."""
            with tempfile.TemporaryDirectory() as folder:
                adapted.export_onnx(Path(folder) / "task.onnx")
                return onnxruntime.InferenceSession(str(Path(folder) / "task.onnx"), options,
                                                    providers=["CPUExecutionProvider"])

        handovers = timed(handed_over, repeats=3, warmup=1)
        session = handed_over()
        feed = {session.get_inputs()[0].name: xq.numpy()}  # looked up once, as OnnxClassifier does
        work = {"torch": lambda: adapted.probabilities(xq), "onnxruntime": lambda: session.run(None, feed)[0]}
        np.testing.assert_allclose(work["onnxruntime"](), work["torch"]().numpy(), atol=1e-4)
        times: dict[str, list[float]] = {name: [] for name in CONTESTANTS}
        for _ in range(repeats):  # alternate, so drift in the machine's speed hits both alike
            for name in CONTESTANTS:
                times[name] += timed(work[name], repeats=1, warmup=1)
        entry = {name: latency(t) for name, t in times.items()}
        saved = entry["torch"]["p50_ms"] - entry["onnxruntime"]["p50_ms"]
        entry["handover_ms"] = 1e3 * percentile(handovers, 0.5)
        entry["break_even_queries"] = QUERIES * entry["handover_ms"] / saved if saved > 0 else None
        report["models"][path.name] = entry
    return report


def print_table(report: dict) -> None:
    print(f"classify {report['queries']} queries after {report['setting']} adaptation, {report['threads']} threads, "
          f"onnxruntime {report['onnxruntime']}: p50 / p95 ms")
    print(f"{'model':36s}{'torch':>16s}{'onnxruntime':>16s}{'torch / ort':>13s}{'export + load':>15s}"
          f"{'break-even queries':>20s}")
    for name, entry in report["models"].items():
        ours, theirs = entry["torch"], entry["onnxruntime"]
        cells = [f"{t['p50_ms']:.1f} / {t['p95_ms']:.1f}" for t in (ours, theirs)]
        even = "never" if entry["break_even_queries"] is None else f"{entry['break_even_queries']:,.0f}"
        print(f"{name:36s}{cells[0]:>16s}{cells[1]:>16s}{ours['p50_ms'] / theirs['p50_ms']:>12.2f}x"
              f"{entry['handover_ms']:>12.0f} ms{even:>20s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs="+", default=[ROOT / "models" / name for name in MODELS])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "onnx_classify.json")
    args = parser.parse_args()
    report = run(args.models, args.repeats)
    print_table(report)
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
