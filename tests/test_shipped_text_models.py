"""The shipped text models on tasks written for these tests: intents for text-minilm, sentiment for its sister."""

from pathlib import Path

import pytest

import fewshot_serve
from fewshot_serve.serving.web_app.examples import EXAMPLES

pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")
MODELS = Path(__file__).resolve().parents[1] / "models"

REVIEWS = {"positive": ["Works perfectly, I love it", "Great value and it arrived early",
                        "Excellent quality, would buy again", "My kids adore this toy",
                        "Sturdy, simple and does the job well"],
           "negative": ["Broke after two days", "Complete waste of money", "The worst purchase I have made this year",
                        "It stopped working and support never replied", "Cheap plastic, returned it at once"]}
QUERIES = {"Fantastic, exactly what I needed": "positive", "Terrible, it fell apart immediately": "negative",
           "I am very happy with this blender": "positive", "Do not buy this, it leaks": "negative"}


def top(adapted, queries):
    return [max(row, key=row.get) for row in adapted.classify(list(queries))]


def test_text_minilm_gets_the_apps_example_right_and_says_how_far_to_trust_it():
    model = fewshot_serve.load(MODELS / "text-minilm.safetensors")
    assert model.takes_text and model.recipe.preprocessing["max_length"] == 128
    example = EXAMPLES["Text"]
    adapted = model.adapt(example.support())
    assert top(adapted, example.queries()) == ["delivery", "refund", "password"]
    assert "on texts like these" in adapted.assessment().summary()


def test_the_sentiment_model_tells_praise_from_complaint():
    sentiment = fewshot_serve.load(MODELS / "text-minilm-sentiment.safetensors")
    assert sentiment.recipe.network["adapt_from"] == 6  # its last layer adapts too
    assert top(sentiment.adapt(REVIEWS), QUERIES) == list(QUERIES.values())
