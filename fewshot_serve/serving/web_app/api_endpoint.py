"""The public ``classify`` endpoint: adapt and classify in one call, for ``gradio_client``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result = client.predict([handle_file("a1.png"), handle_file("b1.png")], '["alpha", "beta"]',
                            [handle_file("query.png")], api_name="/classify")
    # {"labels": ["alpha", "beta"], "predictions": [{"alpha": 0.97, "beta": 0.03}], "adapt_seconds": 0.05,
    #  "verdicts": [{"label": "alpha", "unknown_score": 0.41, "unknown": false}],
    #  "model": "omniglot-conv4", "assessment": {"accuracy": ..., "interval": ..., "summary": ...}}

A verdict's label is null where the query is none of the classes (models calibrated for it:
``fewshot-serve calibrate-unknown``). A fourth argument names the model (default: the first one served).
A text model takes texts instead of files, as JSON lists in the fifth and sixth arguments::

    client.predict([], '["refund", "weather"]', [], "text-minilm", '["I want my money back", "will it rain"]',
                   '["refund me please"]', api_name="/classify")

It is the only endpoint clients may call; the page's own events are private.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from .errors import api_errors
from .handlers import PageHandlers, predictions_for
from .uploads import file_paths


def json_list(value: str, what: str) -> list:
    """A JSON list argument, or a ValueError saying what it should be."""
    try:
        found = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        found = None
    if not isinstance(found, list):
        raise ValueError(f"{what} must be a JSON list")
    return found


def labelled_support(examples: list, labels_json: str, noun: str = "file") -> dict[str, list]:
    """Support examples (file paths, or texts) with one label each (a JSON list) as ``{label: [examples]}``."""
    labels = json_list(labels_json, f"labels (one class name per support {noun})")
    if len(labels) != len(examples):
        raise ValueError(f"got {len(examples)} support {noun}s but {len(labels)} labels")
    support: dict[str, list] = {}
    for label, example in zip(labels, examples):
        support.setdefault(str(label).strip(), []).append(example)
    return support


def add_classify_endpoint(handlers: PageHandlers) -> None:
    """Hidden components and the ``/classify`` event, inside the page's ``gr.Blocks``."""

    @api_errors
    def classify(support_files: Any, labels_json: str, query_files: Any, model_name: str = "",
                 support_texts: str = "", query_texts: str = "") -> dict[str, Any]:
        """One-call API: support files (or, for a text model, texts as a JSON list) with one label each
        (a JSON list), query files (or texts), optionally a model name."""
        model_name, model = handlers.model_named(model_name)
        if model.takes_text:
            support = labelled_support(json_list(support_texts or "[]", "support texts"), labels_json, "text")
            queries = json_list(query_texts or "[]", "query texts")
        else:
            support, queries = labelled_support(file_paths(support_files), labels_json), file_paths(query_files)
        adapted = model.adapt(support)
        predictions = predictions_for(adapted, queries)
        return {"labels": adapted.labels, "predictions": [p.probabilities for p in predictions],
                "verdicts": [{k: v for k, v in p.to_dict().items() if k != "probabilities"} for p in predictions],
                "adapt_seconds": round(adapted.seconds, 4), "model": model_name,
                "assessment": adapted.assessment().to_dict()}

    inputs = [gr.File(file_count="multiple", visible=False), gr.Textbox(visible=False),
              gr.File(file_count="multiple", visible=False), gr.Textbox(value="", visible=False),
              gr.Textbox(value="", visible=False), gr.Textbox(value="", visible=False)]
    gr.Button(visible=False).click(classify, inputs, gr.JSON(visible=False), api_name="classify")
