"""The shipped handwriting model: what its file holds, that it serves characters (API, ONNX), and how it
scores on real held-out alphabets where ../shared has them."""

from pathlib import Path

import pytest
import torch
from conftest import assert_onnx_export_agrees, draw_glyph

import fewshot_serve
from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.model_file import stored_dtype
from fewshot_serve.serving.web_app import describe
from fewshot_serve.training.evaluation import evaluate_episodes

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

HANDWRITING = Path(__file__).resolve().parents[1] / "models" / "omniglot-resnet12.safetensors"


@pytest.fixture(scope="module")
def model():
    return fewshot_serve.load(HANDWRITING, device="cpu")


def test_the_file_holds_eight_pretrained_resnet12s_with_a_one_step_prototype_head_in_int8_under_2_mb(model):
    assert HANDWRITING.stat().st_size <= 2_000_000 and stored_dtype(HANDWRITING) == torch.int8
    recipe = model.recipe
    assert recipe.network["architecture"] == "ensemble" and len(recipe.network["members"]) == 8
    assert all(m["architecture"] == "resnet12" and m["widths"] == [12, 24, 44, 84] for m in recipe.network["members"])
    assert recipe.network["prototype_head"] and recipe.test_steps == 1
    assert "`maml` ensemble of 8 resnet12 meta-trained on omniglot" in describe("handwriting", model)
    assert recipe.dataset == "omniglot" and recipe.algorithm == "maml"
    # pretrained on the training and validation alphabets' characters (the recipe's final run); test alphabets never
    assert recipe.class_counts == {"train+val": 722, "test": 242} and recipe.val_metric == {}
    assert (model.preprocessing.channels, model.preprocessing.image_size) == (1, 28)


def test_it_adapts_to_drawn_characters_and_its_onnx_export_agrees(model, tmp_path):
    support = {f"c{c}": [draw_glyph(700 + c, i) for i in range(2)] for c in range(4)}
    adapted = model.adapt(support)
    queries = [draw_glyph(700 + c, 90 + c) for c in range(4)]
    rows = adapted.classify(queries)
    assert [max(row, key=row.get) for row in rows] == ["c0", "c1", "c2", "c3"]
    assert_onnx_export_agrees(adapted, queries, rows, tmp_path / "characters.onnx")


def test_on_real_held_out_alphabets_it_scores_as_its_model_card_says(model, omniglot_full_root):
    """60 of the model card's 600 20-way 1-shot test episodes (the first ones, same seed); the card's
    figure over 600 is 96.06%, so a mean below 93% over these means the file or the serving path broke."""
    splits = load_splits(DataSpec("omniglot", omniglot_full_root), model.preprocessing)
    sampler = ImageEpisodes(splits["test"], model.preprocessing, 20, 1, 15)
    result = evaluate_episodes(model.network, sampler, tuple(model.recipe.inner_lrs), model.recipe.test_steps, 60,
                               seed=0, device=torch.device("cpu"))
    assert result.mean > 0.93
