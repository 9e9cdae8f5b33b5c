"""ONNX export of an adapted classifier: parity with torch, dynamic batch, torch-free inference."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import draw_glyph

import fewshot_serve
from fewshot_serve import cli

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "omniglot-conv4.safetensors"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = fewshot_serve.load(SHIPPED, device="cpu")
    support = {f"g{c}": [draw_glyph(60 + c, i) for i in range(2)] for c in range(4)}
    adapted = model.adapt(support)
    path = tmp_path_factory.mktemp("onnx") / "task.onnx"
    adapted.export_onnx(path)
    return adapted, path


def test_onnxruntime_matches_torch_within_1e_4_for_any_batch_size(exported):
    adapted, path = exported
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 17):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        expected = adapted.probabilities(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_classifier_reads_labels_and_classifies_like_torch(exported):
    adapted, path = exported
    onnx_model = fewshot_serve.OnnxClassifier(path)
    assert onnx_model.labels == adapted.labels
    queries = [draw_glyph(60 + c, 50) for c in range(4)]
    for a, b in zip(onnx_model.classify(queries), adapted.classify(queries)):
        assert list(a) == list(b)
        np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-4)


def test_onnx_classifier_works_without_torch(exported, tmp_path):
    _, path = exported
    query = tmp_path / "q.png"
    draw_glyph(60, 51).save(query)
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import fewshot_serve\n"
        f"row = fewshot_serve.OnnxClassifier({str(path)!r}).classify([{str(query)!r}])[0]\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(max(row, key=row.get))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in {"g0", "g1", "g2", "g3"}


def test_cli_export_onnx_from_a_support_folder(tmp_path, capsys):
    support = tmp_path / "support"
    for c, name in enumerate(["ka", "na", "ta"]):
        (support / name).mkdir(parents=True)
        for i in range(2):
            draw_glyph(70 + c, i).save(support / name / f"{i}.png")
    out = tmp_path / "cli.onnx"
    assert cli.main(["export-onnx", str(SHIPPED), "--support", str(support), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["ka", "na", "ta"]
    row = fewshot_serve.OnnxClassifier(out).classify([draw_glyph(71, 9)])[0]
    assert list(row) == ["ka", "na", "ta"]
    assert cli.main(["export-onnx", str(SHIPPED), "--support", str(tmp_path / "none"), "--out", str(out)]) == 2
