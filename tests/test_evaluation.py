"""Scores over episodes: the mean with its interval, and the paired difference of two models."""

import pytest

from fewshot_serve.training.evaluation import EvaluationResult, paired_difference


def test_a_paired_difference_is_taken_episode_by_episode_and_is_narrower_than_either_interval():
    before = EvaluationResult.of_scores("accuracy", [0.5, 0.9, 0.6, 1.0, 0.7])
    after = EvaluationResult.of_scores("accuracy", [0.6, 0.9, 0.7, 1.0, 0.8])  # 0.1 better on three episodes
    difference = paired_difference(before, after)
    assert difference.mean == pytest.approx(after.mean - before.mean) == pytest.approx(0.06)
    assert difference.ci95 == pytest.approx(1.96 * 0.05477226 / 5 ** 0.5)
    assert difference.ci95 < min(before.ci95, after.ci95) / 2
    assert paired_difference(after, after).mean == 0 and paired_difference(after, after).ci95 == 0
    assert (difference.episodes, difference.scores[:2]) == (5, pytest.approx((0.1, 0.0)))


def test_a_paired_difference_refuses_results_of_other_episodes():
    five = EvaluationResult.of_scores("accuracy", [0.5] * 5)
    with pytest.raises(ValueError, match="the same episodes"):
        paired_difference(five, EvaluationResult.of_scores("accuracy", [0.5] * 4))
    with pytest.raises(ValueError, match="the same metric"):
        paired_difference(five, EvaluationResult.of_scores("mse", [0.5] * 5))
    with pytest.raises(ValueError, match="the same episodes"):
        paired_difference(EvaluationResult("accuracy", 0.5, 0.0, 5), five)  # made without its scores
