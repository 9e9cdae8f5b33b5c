"""The shipped photo model: what its file holds, that it serves colour photos (API, ONNX), and the app's menu."""

import sys
from pathlib import Path

import pytest
import torch

import fewshot_serve
from conftest import assert_onnx_export_agrees, draw_glyph
from fewshot_serve.model_file import stored_dtype

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "models" / "photos-resnet12.safetensors"


@pytest.fixture(scope="module")
def model():
    return fewshot_serve.load(PHOTOS, device="cpu")


def test_the_file_holds_a_pretrained_then_meta_learned_resnet12_in_int8_under_50_mb(model):
    assert PHOTOS.stat().st_size <= 50 * 2**20 and stored_dtype(PHOTOS) == torch.int8
    recipe = model.recipe
    assert recipe.network["architecture"] == "resnet12" and recipe.network["norm"] == "fixed"
    assert recipe.dataset == "tiny-imagenet" and recipe.algorithm in ("maml", "fomaml")
    # its last pretraining stage also saw the 20 validation classes (the recipe's final run); the 40 test classes never
    assert recipe.class_counts == {"train+val": 120, "test": 40} and recipe.val_metric == {}
    assert (model.preprocessing.channels, model.preprocessing.image_size) == (3, 48)


def test_it_adapts_to_colour_photos_and_its_onnx_export_agrees(model, tmp_path):
    support = {f"c{c}": [draw_glyph(900 + c, i, size=48, colour=True) for i in range(3)] for c in range(3)}
    adapted = model.adapt(support)
    queries = [draw_glyph(900 + c, 50, size=48, colour=True) for c in range(3)]
    rows = adapted.classify(queries)
    assert all(abs(sum(row.values()) - 1) < 1e-5 for row in rows)
    assert [max(row, key=row.get) for row in rows] == ["c0", "c1", "c2"]  # distinct shapes and colours
    assert_onnx_export_agrees(adapted, queries, rows, tmp_path / "photos.onnx")


def test_the_app_offers_the_photo_model_first():
    sys.path.insert(0, str(ROOT))
    import app

    assert [p.name for p in app.shipped_models()[:2]] == ["photos-resnet12.safetensors", "omniglot-resnet12.safetensors"]
