""""None of these": the score as defined, its threshold calibrated on training classes and carried in the
model file, predict() rejecting above it, and refusals."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import with_recipe
from test_efficientnet_lite import recipe_for, tiny_lite
from test_frozen_runtime import NETWORKS, saved, task

import fewshot_serve
from fewshot_serve import InputError, Prediction
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.model_file import ModelFileError, load_model, save_model
from fewshot_serve.networks import ResNet12
from fewshot_serve.training.unknown_calibration import ScoredEpisodes, calibrate_unknown, frozen_table
from fewshot_serve.unknown import SCORE, threshold_for

CALIBRATION = {"score": SCORE, "thresholds": {"1": 0.9, "5": 0.5}, "false_rejection": 0.05}


def test_the_threshold_is_read_between_the_calibrated_shot_counts():
    assert threshold_for(CALIBRATION, 1) == 0.9
    assert threshold_for(CALIBRATION, 3) == pytest.approx(0.7)
    assert threshold_for(CALIBRATION, 5) == 0.5
    assert threshold_for(CALIBRATION, 20) == 0.5  # beyond the last: the nearest one's


@pytest.mark.parametrize("name", [*NETWORKS, "resnet12 with support statistics"])
def test_the_score_is_the_distance_to_the_nearest_class_mean(tmp_path, name):
    if name in NETWORKS:
        path = saved(tmp_path, name)
    else:  # its frozen part normalizes with the support set's statistics, so queries go with the support
        torch.manual_seed(5)
        network = ResNet12(3, (3, 4, 5, 6), 32, norm="support", adapt_from=3)
        path = tmp_path / "support-norm.safetensors"
        recipe = recipe_for(tiny_lite(dtype=torch.float32))
        recipe.network = network.config()
        save_model(path, network, recipe)
    model = fewshot_serve.load(path, "cpu", runtime="torch")
    support, queries = task(shots=3)
    adapted = model.adapt(support)
    predictions = adapted.predict(queries)
    # by hand: every image through the adapted network's features, support then queries as one batch
    network, x = model.network, model.prepare(queries, [f"q{i}" for i in range(len(queries))])
    with torch.no_grad():
        both = torch.cat([adapted.support_images, x])
        features = network.head_input(adapted.params, network.frozen_part(adapted.params, both, n_ref=9), n_ref=9)
    support_features, query_features = features[:9], features[9:]
    means = [support_features[adapted.support_targets == c].mean(0) for c in range(3)]
    for prediction, feature, probabilities in zip(predictions, query_features, adapted.classify(queries)):
        expected = min(torch.linalg.vector_norm(feature - mean).item() for mean in means)
        assert prediction.unknown_score == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert prediction.probabilities == pytest.approx(probabilities, abs=1e-5)
        assert prediction.label == max(probabilities, key=probabilities.get) and not prediction.unknown


def test_onnxruntime_gives_the_scores_torch_gives(tmp_path):
    path = saved(tmp_path, "efficientnet head only")
    support, queries = task()
    scores = [[p.unknown_score for p in fewshot_serve.load(path, "cpu", runtime=r).adapt(support).predict(queries)]
              for r in ("torch", "onnxruntime")]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_predict_rejects_above_the_files_threshold(tmp_path):
    source = saved(tmp_path, "efficientnet head only")
    support, queries = task(shots=2)
    scores = [p.unknown_score for p in fewshot_serve.load(source, "cpu").adapt(support).predict(queries)]
    middle = sorted(scores)[len(scores) // 2]
    path = with_recipe(source, tmp_path / "calibrated.safetensors",
                       unknown_calibration={**CALIBRATION, "thresholds": {"1": 10.0, "2": middle}})
    adapted = fewshot_serve.load(path, "cpu").adapt(support)  # 2 shots: the "2" threshold
    assert adapted.unknown_threshold == middle
    predictions = adapted.predict(queries, reject_unknown=True)
    for prediction, score in zip(predictions, scores):
        assert prediction.unknown == (score > middle) and (prediction.label is None) == prediction.unknown
        assert prediction.unknown_score == pytest.approx(score, abs=1e-5)
        assert set(prediction.to_dict()) == {"label", "probabilities", "unknown_score", "unknown", "unsure"}
    assert 0 < sum(p.unknown for p in predictions) < len(predictions)


def test_rejection_is_refused_without_a_calibration_or_with_a_bad_option(tmp_path):
    adapted = fewshot_serve.load(saved(tmp_path, "efficientnet head only"), "cpu").adapt(task()[0])
    with pytest.raises(InputError, match="calibrate-unknown"):
        adapted.predict(task()[1], reject_unknown=True)
    with pytest.raises(InputError, match="True or False"):
        adapted.predict(task()[1], reject_unknown="yes")
    assert not any(p.unknown for p in adapted.predict(task()[1]))  # without the option, nothing is rejected


@pytest.mark.parametrize("calibration, message", [
    ({**CALIBRATION, "score": "max probability"}, "score must be"),
    ({**CALIBRATION, "thresholds": {}}, "needs thresholds"),
    ({**CALIBRATION, "thresholds": {"0": 1.0}}, "not a positive integer"),
    ({**CALIBRATION, "thresholds": {"1": float("nan")}}, "must be a distance"),
    ({**CALIBRATION, "false_rejection": 1.5}, "false_rejection"),
    ([1, 2], "JSON object"),
])
def test_a_bad_calibration_in_a_file_is_refused(tmp_path, calibration, message):
    path = with_recipe(saved(tmp_path, "efficientnet head only"), tmp_path / "bad.safetensors",
                       unknown_calibration=calibration)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_calibration_rejects_the_stated_share_of_training_queries_and_round_trips(colour_model, tmp_path):
    tree = colour_model.parent / "classes"
    out = tmp_path / "calibrated.safetensors"
    recipe = calibrate_unknown(colour_model, out, false_rejection=0.2, ways=3, shots=(1, 2), episodes=20,
                               queries=2, data_root=tree, progress=False)
    assert load_model(out)[1].unknown_calibration == recipe.unknown_calibration
    assert set(recipe.unknown_calibration["thresholds"]) == {"1", "2"}
    # the same episodes again: above its threshold lie 20% of their in-task queries (up to the quantile's rounding)
    network, _ = load_model(colour_model)
    classes = load_splits(DataSpec("folder", tree, split_seed=recipe.split_seed), recipe.image_preprocessing())["train"]
    for shots in (1, 2):
        scored = ScoredEpisodes(network, recipe, classes, recipe.image_preprocessing(),
                                frozen_table(network, classes, recipe.image_preprocessing()), 3, shots, 2)
        generator = torch.Generator().manual_seed(0)
        scores = torch.cat([scored.scores(scored.sample(generator))[0] for _ in range(20)])
        rejected = (scores > recipe.unknown_calibration["thresholds"][str(shots)]).float().mean().item()
        assert 0.2 - 1 / len(scores) <= rejected <= 0.2 + 1e-6
    served = fewshot_serve.load(out, "cpu")
    assert served.recipe.unknown_calibration["false_rejection"] == 0.2


def test_calibration_refuses_bad_settings(colour_model, tmp_path):
    with pytest.raises(ValueError, match="false-rejection"):
        calibrate_unknown(colour_model, tmp_path / "x.safetensors", false_rejection=1.5)
    with pytest.raises(ValueError, match="shot counts"):
        calibrate_unknown(colour_model, tmp_path / "x.safetensors", shots=(0,))


def test_the_page_marks_a_rejected_query_none_of_these_and_a_split_one_unsure():
    from fewshot_serve.serving.web_app.results_table import verdict_mark

    rejected = Prediction(None, {"a": 0.6, "b": 0.4}, 2.0, True)
    assert verdict_mark(rejected) == "none of these?"
    assert verdict_mark(dataclasses.replace(rejected, label="a", unknown=False)) == ""
    split = Prediction("a", {"a": 0.45, "b": 0.35, "c": 0.2}, 0.1, False, unsure=True)
    assert verdict_mark(split) == "unsure"
    assert verdict_mark(dataclasses.replace(rejected, unsure=True)) == "none of these?"  # rejection comes first
