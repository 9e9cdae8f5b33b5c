"""Calibrated probabilities: the temperature fit, the calibration error, the "unsure" level, the recipe entry,
and every serving path (torch, onnxruntime's frozen part, predict, ONNX export, a text model) applying it."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import with_recipe
from test_frozen_runtime import saved, task
from test_text import SUPPORT, save_tiny_text_model

import fewshot_serve
from fewshot_serve.calibration import METHOD, CalibratedSoftmax, temperature_for, unsure_below
from fewshot_serve.data.datasets import load_folder_tree
from fewshot_serve.files.model_file import ModelFileError, load_model
from fewshot_serve.training.probability_calibration import (
    EpisodeSource,
    calibrate_probabilities,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    log_loss,
    reliability,
    unsure_level,
)

CALIBRATION = {"method": METHOD, "temperatures": {"1": 0.5, "5": 0.25}, "unsure_below": 0.7}


def test_the_temperature_is_read_between_the_fitted_shot_counts():
    assert [temperature_for(CALIBRATION, shots) for shots in (1, 3, 5, 20)] == [0.5, 0.375, 0.25, 0.25]
    assert temperature_for({}, 3) == 1.0 and unsure_below({}) == 0.5 and unsure_below(CALIBRATION) == 0.7


def test_the_fit_recovers_the_temperature_the_answers_were_drawn_with():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20_000, 5, generator=generator, dtype=torch.float64)
    for truth in (0.2, 1.0, 4.0):
        targets = torch.multinomial(torch.softmax(logits / truth, 1), 1, generator=generator).squeeze(1)
        fitted = fit_temperature(logits, targets)
        assert fitted == pytest.approx(truth, rel=0.05)
        assert log_loss(logits, targets, fitted) <= min(log_loss(logits, targets, fitted * f) for f in (0.9, 1.1))
        # calibrated answers are right as often as they say, to within sampling noise
        assert expected_calibration_error(torch.softmax(logits / fitted, 1), targets) < 0.02


def test_the_calibration_error_is_the_weighted_gap_per_bin():
    probabilities = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 0, 0])  # the 0.95 bin is right half the time, the 0.55 bin always
    assert expected_calibration_error(probabilities, targets) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    rows = reliability(probabilities, targets)
    assert [(r["answers"], r["accuracy"]) for r in rows] == [(2, 1.0), (2, 0.5)]


def test_unsure_marks_the_answers_below_which_a_third_are_wrong():
    confidence = torch.linspace(0.5, 0.99, 100, dtype=torch.float64)  # sorted; class 0 always on top
    probabilities = torch.stack([confidence, 1 - confidence], 1)
    targets = torch.zeros(100, dtype=torch.long)
    targets[:30:2] = 1  # the lowest 30 answers: every other one wrong; above them all right
    level = unsure_level(probabilities, targets, min_answers=5)
    marked = int((confidence < level).sum())
    # by the definition: the most answers from the bottom of which at least a third are wrong
    wrong_share = [(targets[:k] == 1).double().mean().item() for k in range(1, 101)]
    assert marked == max(k for k in range(5, 101) if wrong_share[k - 1] >= 1 / 3) == 45
    report = calibration_report(torch.log(probabilities), targets, 1.0, level)
    assert report["wrong_when_marked"] >= 1 / 3 and report["wrong_when_unmarked"] == 0.0
    assert unsure_level(probabilities[40:], targets[40:]) == 0.0  # all right: nothing to mark


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        CalibratedSoftmax(temperature)


@pytest.mark.parametrize("calibration, message", [
    ({"method": "platt", "temperatures": {"1": 1.0}}, "method"),
    ({"method": METHOD, "temperatures": {}}, "needs temperatures"),
    ({"method": METHOD, "temperatures": {"0": 1.0}}, "positive integer"),
    ({"method": METHOD, "temperatures": {"1": -2.0}}, r"\[0.001, 1000\]"),
    ({"method": METHOD, "temperatures": {"1": 1.0}, "unsure_below": 2}, "unsure_below"),
    ([1, 2], "JSON object"),
])
def test_a_bad_calibration_in_a_model_file_is_refused(tmp_path, calibration, message):
    path = with_recipe(saved(tmp_path, "efficientnet head only"), tmp_path / "bad.safetensors",
                       probability_calibration=calibration)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_every_serving_path_divides_the_logits_by_the_files_temperature(tmp_path, runtime):
    source = saved(tmp_path, "efficientnet head only")
    path = with_recipe(source, tmp_path / "calibrated.safetensors", probability_calibration=CALIBRATION)
    support, queries = task(shots=3)  # 3 shots: between the fitted counts, temperature 0.375
    plain = fewshot_serve.load(source, "cpu", runtime=runtime).adapt(support).classify(queries)
    adapted = fewshot_serve.load(path, "cpu", runtime=runtime).adapt(support)
    assert adapted.softmax.temperature == pytest.approx(0.375)
    rows = adapted.classify(queries)
    expected = torch.softmax(torch.log(torch.tensor([list(r.values()) for r in plain])) / 0.375, 1)
    torch.testing.assert_close(torch.tensor([list(r.values()) for r in rows]), expected, rtol=1e-4, atol=1e-5)
    assert max(max(r.values()) for r in rows) > max(max(r.values()) for r in plain)  # sharper, same ranking
    assert [max(r, key=r.get) for r in rows] == [max(r, key=r.get) for r in plain]
    predictions = adapted.predict(queries)
    for prediction, row in zip(predictions, rows):
        assert prediction.probabilities == pytest.approx(row, abs=1e-5)
        assert prediction.unsure == (max(row.values()) < 0.7)


def test_the_onnx_export_carries_the_temperature(tmp_path):
    from conftest import assert_onnx_export_agrees

    path = with_recipe(saved(tmp_path, "efficientnet head only"), tmp_path / "calibrated.safetensors",
                       probability_calibration=CALIBRATION)
    support, queries = task(shots=1)
    adapted = fewshot_serve.load(path, "cpu", runtime="torch").adapt(support)
    assert adapted.softmax.temperature == 0.5
    assert_onnx_export_agrees(adapted, queries, adapted.classify(queries), tmp_path / "task.onnx")


def test_a_text_model_applies_its_temperature(tmp_path):
    source = save_tiny_text_model(tmp_path / "text.safetensors", adapt_from=2)
    path = with_recipe(source, tmp_path / "calibrated.safetensors",
                       probability_calibration={"method": METHOD, "temperatures": {"2": 0.5}})
    queries = ["refund the order", "is it sunny"]
    plain = fewshot_serve.load(source).adapt(SUPPORT).classify(queries)
    rows = fewshot_serve.load(path).adapt(SUPPORT).classify(queries)
    expected = torch.softmax(torch.log(torch.tensor([list(r.values()) for r in plain])) / 0.5, 1)
    torch.testing.assert_close(torch.tensor([list(r.values()) for r in rows]), expected, rtol=1e-4, atol=1e-5)


def test_calibrate_fits_on_the_sources_episodes_and_writes_the_recipe(colour_model, tmp_path):
    network, recipe = load_model(colour_model)
    preprocessing = recipe.image_preprocessing()
    source = EpisodeSource.of("classes", network, load_folder_tree(colour_model.parent / "classes", preprocessing),
                              preprocessing)
    out = tmp_path / "calibrated.safetensors"
    written = calibrate_probabilities(colour_model, out, [source], ways=3, shots=(1, 2), episodes=8, queries=2,
                                      command="fewshot-serve calibrate test", progress=False)
    calibration = load_model(out)[1].probability_calibration
    assert calibration == written.probability_calibration and set(calibration["temperatures"]) == {"1", "2"}
    assert 0 <= calibration["unsure_below"] <= 1 and written.command.endswith("fewshot-serve calibrate test")
    # on the very episodes it was fitted on, the fitted temperature's log-loss is the least
    logits, targets = source.query_logits(recipe, 3, 2, 8, queries=2, progress=False)
    fitted = calibration["temperatures"]["2"]
    assert log_loss(logits, targets, fitted) <= log_loss(logits, targets, 1.0) + 1e-9
    served = fewshot_serve.load(out, "cpu").adapt({"a": [task()[1][0]] * 2, "b": [task()[1][1]] * 2})
    assert served.softmax.temperature == pytest.approx(fitted)


def test_calibrate_refuses_bad_settings(colour_model, tmp_path):
    with pytest.raises(ValueError, match="source of classes"):
        calibrate_probabilities(colour_model, tmp_path / "x.safetensors", [], episodes=5)


def test_the_calibrate_command_fits_on_a_folder_of_classes(colour_model, tmp_path, capsys):
    from fewshot_serve.cli import main

    out = tmp_path / "calibrated.safetensors"
    code = main(["calibrate", str(colour_model), "--split", "none", "--folder", str(colour_model.parent / "classes"),
                 "--ways", "3", "--shots", "1", "--episodes", "3", "--queries", "2", "--out", str(out)])
    assert code == 0 and '"temperatures": {"1": ' in capsys.readouterr().out
    calibration = load_model(out)[1].probability_calibration
    assert calibration["fitted_on"].startswith("classes: 3-way, 3 episodes")
    assert set(calibration["temperatures"]) == {"1"}
