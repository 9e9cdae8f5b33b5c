"""The photo model's frozen part (the whole backbone, for a head-only inner loop) on three runtimes, side by side.

    python benchmarks/frozen_part_runtimes.py [--model models/photos-efficientnet-lite0.safetensors] [--repeats 20]

The backbone is what a request spends its time on: 25 support and 75 query images through
EfficientNet-Lite0 at 224x224 for 5-way 5-shot, against a head of 1280 x 5 weights. Timed in one
run, alternating, on the same random images: torch float32 (the folded network serving runs,
channels-last), torch under bfloat16 autocast (``load(..., bf16=True)``, where the CPU has native
bf16), and onnxruntime float32 on the same folded network exported to ONNX. Each runtime's
features are first checked against float32 torch (onnxruntime within 1e-4; bfloat16's largest
difference is printed, its accuracy cost measured in the model card). Prints p50 per batch and the
ratios to torch float32; writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from adapt_latency import percentile, timed  # benchmarks/ is this script's folder

from fewshot_serve.devices import bf16_available
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.files.model_file import load_model
from fewshot_serve.serving.onnx_export import export_onnx

ROOT = Path(__file__).resolve().parents[1]


def onnx_session(body: torch.nn.Module, preprocessing) -> onnxruntime.InferenceSession:
    """``body`` exported as serving's ONNX export writes it, opened by onnxruntime on this many threads."""
    with tempfile.TemporaryDirectory() as folder:
        export_onnx(body, [], preprocessing, Path(folder) / "body.onnx")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        path = str(Path(folder) / "body.onnx")
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run(model_path: Path, repeats: int, batches=(25, 75)) -> dict:
    network, recipe = load_model(model_path)
    params = network.at_step(dict(network.named_parameters()), 0)
    body = network.folded_features(params, None).eval().to(memory_format=torch.channels_last)
    size = recipe.preprocessing["image_size"]
    report = {"model": model_path.name, "image_size": size, "threads": torch.get_num_threads(), "batches": {}}
    session = onnx_session(body, recipe.image_preprocessing())
    for batch in batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        channels_last = x.contiguous(memory_format=torch.channels_last)

        def float32() -> torch.Tensor:
            with torch.inference_mode():
                return body(channels_last)

        def bfloat16() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return body(channels_last).float()

        def ort() -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

        runtimes = {"torch float32": float32, "onnxruntime float32": ort}
        if bf16_available(torch.device("cpu")):
            runtimes["torch bfloat16"] = bfloat16
        reference = float32()
        np.testing.assert_allclose(ort().numpy(), reference.numpy(), atol=1e-4)
        entry = {}
        for name, fn in runtimes.items():
            times = timed(fn, repeats)
            entry[name] = {"p50_ms": 1e3 * percentile(times, 50),
                           "max_abs_difference": float((fn() - reference).abs().max())}
        report["batches"][str(batch)] = entry
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "photos-efficientnet-lite0.safetensors")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "frozen_part_runtimes.json")
    args = parser.parse_args()
    report = run(args.model, args.repeats)
    print(f"{report['model']} at {report['image_size']}x{report['image_size']}, {report['threads']} threads")
    for batch, entry in report["batches"].items():
        base = entry["torch float32"]["p50_ms"]
        for name, result in entry.items():
            print(f"  {batch:>3} images, {name:20s} p50 {result['p50_ms']:8.1f} ms  {base / result['p50_ms']:.2f}x "
                  f"(largest difference {result['max_abs_difference']:.1e})")
    atomic_write_json(args.out, report)


if __name__ == "__main__":
    main()
