"""The accuracy estimate from the support set: the same predictions as a plain loop of adaptations
without each image, classes with one image named, the folds and the interval as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_frozen_runtime import saved, task

import fewshot_serve
from fewshot_serve.serving.assessment import (
    INTERVAL_WIDENING,
    MAX_FOLDS,
    Z_90,
    Assessment,
    folds_of,
    wilson_interval,
)


def plain_loop(model, support: dict) -> dict[tuple[str, str], int]:
    """Through the public API: the k-th image of every class with two or more held out at once, in turn."""
    counts: dict[tuple[str, str], int] = {}
    for k in range(max(len(images) for images in support.values())):
        held = {label: images[k] for label, images in support.items() if len(images) >= 2 and k < len(images)}
        if not held:
            continue
        rest = {label: [image for i, image in enumerate(images) if not (label in held and i == k)]
                for label, images in support.items()}
        rows = model.adapt(rest).classify(list(held.values()))
        for label, row in zip(held, rows):
            predicted = max(row, key=row.get)
            counts[label, predicted] = counts.get((label, predicted), 0) + 1
    return counts


def as_counts(assessment) -> dict[tuple[str, str], int]:
    labels = assessment.labels
    return {(labels[t], labels[p]): n for t, row in enumerate(assessment.confusion) for p, n in enumerate(row) if n}


@pytest.mark.parametrize("runtime", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_the_estimate_equals_a_plain_loop_of_adaptations_without_one_image_of_each_class(tmp_path, runtime):
    model = fewshot_serve.load(saved(tmp_path, "efficientnet head only"), "cpu", runtime=runtime)
    support, _ = task(2, classes="abc", shots=3)
    support["c"] = support["c"][:1]  # a class with a single image: not estimable
    assessment = model.adapt(support).assessment()
    expected = plain_loop(model, support)
    assert as_counts(assessment) == expected and assessment.held_out == 6 and assessment.folds == 3
    right = sum(n for (true, predicted), n in expected.items() if true == predicted)
    assert assessment.accuracy == pytest.approx(right / 6)
    assert assessment.per_class["c"] is None and assessment.not_estimable == ["c"]
    assert "Not estimable for 'c'" in assessment.summary()


def test_a_network_with_support_statistics_is_estimated_the_same_way(colour_model):
    model = fewshot_serve.load(colour_model, "cpu")
    rng = np.random.default_rng(3)
    support = {c: [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)] for c in "xyz"}
    assert as_counts(model.adapt(support).assessment()) == plain_loop(model, support)


def test_one_image_per_class_gives_no_estimate(tmp_path):
    model = fewshot_serve.load(saved(tmp_path, "efficientnet head only"), "cpu", runtime="torch")
    assessment = model.adapt(task(4, shots=1)[0]).assessment()
    assert assessment.accuracy is None and assessment.interval is None and assessment.folds == 0
    assert assessment.summary().startswith("No estimate: every class has a single image")


def test_each_fold_holds_out_one_image_of_every_class_and_each_image_once():
    targets = torch.tensor([0] * 30 + [1] * 2 + [2] * 1)
    folds = folds_of(targets)
    assert len(folds) == MAX_FOLDS
    held = torch.cat(folds).sort().values
    assert held.tolist() == list(range(32))  # every image of a class with two or more, once; not the single one
    for fold in folds:
        for label in (0, 1):
            assert int((targets[fold] == label).sum()) < int((targets == label).sum())  # the class keeps an image
    assert [f.tolist() for f in folds_of(torch.tensor([0, 0, 1, 1, 1]))] == [[0, 2], [1, 3], [4]]


def test_the_wilson_interval():
    low, high = wilson_interval(8, 10, Z_90)  # the textbook 90% interval
    assert low == pytest.approx(0.5408, abs=1e-3) and high == pytest.approx(0.9314, abs=1e-3)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0
    # the served one is wider by the widening chosen on the validation sets
    served = wilson_interval(8, 10)
    assert INTERVAL_WIDENING > 1 and served[0] < low and served[1] > high
    assert served == wilson_interval(8, 10, Z_90 * INTERVAL_WIDENING)
    # all right stays exactly 1 whatever the count and z (rounding once left it a hair under)
    assert all(wilson_interval(n, n, z)[1] == 1.0 for n in range(1, 60) for z in (1.0, 2.3, 3.1))


def test_the_summary_states_a_range_what_it_rests_on_and_the_confusions():
    clean = Assessment(["a", "b"], 1.0, (0.79, 1.0), {"a": 1.0, "b": 1.0}, [[10, 0], [0, 10]], 20, 10, 0.1)
    assert clean.summary() == ("Likely 79–100% right on images like these (from 20 held-out support images). "
                               "No confusions among them.")
    mixed = Assessment(["husky", "wolf", "cat"], 0.75, (0.43, 0.93), {"husky": 0.5, "wolf": 1.0, "cat": None},
                       [[1, 1, 0], [0, 2, 0], [0, 0, 0]], 4, 2, 0.1, noun="text")
    assert mixed.summary() == ("Likely 43–93% right on texts like these (from 4 held-out support texts). "
                               "'husky' and 'wolf' were confused: add texts of both. "
                               "Not estimable for 'cat' (a single text each).")
