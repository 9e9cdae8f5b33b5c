"""The public ``classify`` endpoints: adapt and classify in one call, for ``gradio_client``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result = client.predict([handle_file("a1.png"), handle_file("b1.png")], '["alpha", "beta"]',
                            [handle_file("query.png")], api_name="/classify")
    # {"labels": ["alpha", "beta"], "predictions": [{"alpha": 0.97, "beta": 0.03}], "adapt_seconds": 0.05,
    #  "verdicts": [{"label": "alpha", "unknown_score": 0.41, "unknown": false}],
    #  "model": "omniglot-conv4", "assessment": {"accuracy": ..., "interval": ..., "summary": ...}}

A verdict's label is null where the query is none of the classes (models calibrated for it:
``fewshot-serve calibrate-unknown``); ``unsure`` marks a top probability under the model file's calibrated
level. A query that cannot be read gets ``null`` probabilities and a verdict ``{"error": "..."}``, and
the others are classified, as on the page. A fourth argument names the model (default: the first one served).
A text model's twin, ``classify_texts``, takes the support set as a JSON object of texts and the
queries as a JSON list (a separate endpoint, so that ``classify``'s four arguments stay as they were
for clients that send them over plain HTTP)::

    client.predict('{"refund": ["I want my money back"], "weather": ["will it rain"]}', '["refund me please"]',
                   "text-minilm", api_name="/classify_texts")

They are the only endpoints clients may call; the page's own events are private.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from ..api import check_queries
from .errors import api_errors
from .handlers import PageHandlers, classified
from .results_table import QueryResult
from .uploads import file_paths


def json_argument(value: str, kind: type, message: str) -> Any:
    """A JSON argument of type ``kind`` (list or dict), or a ValueError with ``message``."""
    try:
        found = json.loads(value)
    except (TypeError, json.JSONDecodeError):
        found = None
    if not isinstance(found, kind):
        raise ValueError(message)
    return found


def json_list(value: str, what: str) -> list:
    """A JSON list argument, or a ValueError saying what it should be."""
    return json_argument(value, list, f"{what} must be a JSON list")


def labelled_support(paths: list[str], labels_json: str) -> dict[str, list[str]]:
    """Support files with one label each (a JSON list) as ``{label: [paths]}``."""
    labels = json_list(labels_json, "labels (one class name per support file)")
    if len(labels) != len(paths):
        raise ValueError(f"got {len(paths)} support files but {len(labels)} labels")
    support: dict[str, list[str]] = {}
    for index, (label, path) in enumerate(zip(labels, paths)):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"label #{index + 1} must be a non-empty string (a class name), got {json.dumps(label)}")
        support.setdefault(label.strip(), []).append(path)
    return support


def text_support(support_json: str) -> dict[str, list]:
    """``{"label": ["text", ...], ...}`` from JSON (the texts themselves are checked when adapted)."""
    return json_argument(support_json, dict, 'the support set must be a JSON object {"label": ["text", ...], ...}')


def verdict(row: QueryResult) -> dict[str, Any]:
    """A query's verdict without its probabilities, or the reason it could not be classified."""
    if row.prediction is None:
        return {"error": row.error}
    return {k: v for k, v in row.prediction.to_dict().items() if k != "probabilities"}


def result_of(model_name: str, adapted: Any, queries: list) -> dict[str, Any]:
    """The endpoints' answer: probabilities, verdicts (a bad query's error in its own entry), the
    adaptation's time and the support set's own estimate."""
    check_queries(queries, adapted.model.example_noun)
    names = [str(query) if adapted.model.takes_text else Path(str(query)).name for query in queries]
    rows = classified(adapted, list(zip(names, queries)))
    return {"labels": adapted.labels,
            "predictions": [row.prediction.probabilities if row.prediction else None for row in rows],
            "verdicts": [verdict(row) for row in rows], "adapt_seconds": round(adapted.seconds, 4),
            "model": model_name, "assessment": adapted.assessment().to_dict()}


def add_classify_endpoint(handlers: PageHandlers) -> None:
    """Hidden components and the ``/classify`` event, inside the page's ``gr.Blocks``."""

    def model_for(model_name: str, texts: bool) -> tuple[str, Any]:
        name, model = handlers.model_named(model_name)
        if model.takes_text != texts:
            right = "/classify_texts" if model.takes_text else "/classify"
            raise ValueError(f"{name} classifies {'texts' if model.takes_text else 'images'}: call {right}")
        return name, model

    @api_errors
    def classify(support_files: Any, labels_json: str, query_files: Any, model_name: str = "") -> dict[str, Any]:
        """One-call API: support files with one label each (a JSON list), query files, optionally a model name."""
        model_name, model = model_for(model_name or handlers.first_for(texts=False), texts=False)
        adapted = model.adapt(labelled_support(file_paths(support_files), labels_json))
        return result_of(model_name, adapted, file_paths(query_files))

    @api_errors
    def classify_texts(support_json: str, queries_json: str, model_name: str = "") -> dict[str, Any]:
        """One-call API for a text model: ``{"label": [texts]}`` and a list of query texts (JSON), optionally
        a model name (default: the first text model served)."""
        model_name, model = model_for(model_name or handlers.first_for(texts=True), texts=True)
        adapted = model.adapt(text_support(support_json))
        return result_of(model_name, adapted, json_list(queries_json, "the queries (a list of texts)"))

    inputs = [gr.File(file_count="multiple", visible=False), gr.Textbox(visible=False),
              gr.File(file_count="multiple", visible=False), gr.Textbox(value="", visible=False)]
    gr.Button(visible=False).click(classify, inputs, gr.JSON(visible=False), api_name="classify")
    text_inputs = [gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Textbox(value="", visible=False)]
    gr.Button(visible=False).click(classify_texts, text_inputs, gr.JSON(visible=False), api_name="classify_texts")
