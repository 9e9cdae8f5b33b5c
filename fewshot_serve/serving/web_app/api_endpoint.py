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
It is the only endpoint clients may call; the page's own events are private.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from .errors import api_errors
from .handlers import PageHandlers, predictions_for
from .uploads import file_paths


def labelled_support(support_files: Any, labels_json: str) -> dict[str, list[str]]:
    """Support files with one label each (a JSON list) as ``{label: [paths]}``."""
    try:
        labels = json.loads(labels_json)
    except (TypeError, json.JSONDecodeError):
        raise ValueError("labels must be a JSON list with one class name per support file") from None
    paths = file_paths(support_files)
    if not isinstance(labels, list) or len(labels) != len(paths):
        count = len(labels) if isinstance(labels, list) else 0
        raise ValueError(f"got {len(paths)} support files but {count} labels")
    support: dict[str, list[str]] = {}
    for label, path in zip(labels, paths):
        support.setdefault(str(label).strip(), []).append(path)
    return support


def add_classify_endpoint(handlers: PageHandlers) -> None:
    """Hidden components and the ``/classify`` event, inside the page's ``gr.Blocks``."""

    @api_errors
    def classify(support_files: Any, labels_json: str, query_files: Any, model_name: str = "") -> dict[str, Any]:
        """One-call API: support files with one label each (a JSON list), query files, optionally a model name."""
        model_name, model = handlers.model_named(model_name)
        adapted = model.adapt(labelled_support(support_files, labels_json))
        predictions = predictions_for(adapted, file_paths(query_files))
        return {"labels": adapted.labels, "predictions": [p.probabilities for p in predictions],
                "verdicts": [{k: v for k, v in p.to_dict().items() if k != "probabilities"} for p in predictions],
                "adapt_seconds": round(adapted.seconds, 4), "model": model_name,
                "assessment": adapted.assessment().to_dict()}

    inputs = [gr.File(file_count="multiple", visible=False), gr.Textbox(visible=False),
              gr.File(file_count="multiple", visible=False), gr.Textbox(value="", visible=False)]
    gr.Button(visible=False).click(classify, inputs, gr.JSON(visible=False), api_name="classify")
