"""The Gradio app: name classes, upload, draw or photograph a few images of each, Adapt, then classify queries.

Each browser session keeps its own :class:`AdaptedClassifier` in ``gr.State``; the shared
:class:`FewShotModel` is never modified, so many users adapt at once without seeing each other's
classes. Every handler turns bad input into a readable ``gr.Error`` message, never a traceback.
With several model files (say characters and photos) a menu switches between them; each is
loaded once at start, and switching drops the session's adapted classifier.

The ``classify`` API endpoint does the whole round trip in one call for ``gradio_client``::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    result = client.predict([handle_file("a1.png"), handle_file("b1.png")], '["alpha", "beta"]',
                            [handle_file("query.png")], api_name="/classify")
    # {"labels": ["alpha", "beta"], "predictions": [{"alpha": 0.97, "beta": 0.03}], "adapt_seconds": 0.05,
    #  "verdicts": [{"label": "alpha", "unknown_score": 0.41, "unknown": false}],
    #  "model": "omniglot-conv4", "assessment": {"accuracy": ..., "interval": ..., "summary": ...}}

A verdict's label is null where the query is none of the classes (models calibrated for it:
``fewshot-serve calibrate-unknown``; the page then captions it "none of these?").

A fourth argument names the model (default: the first one served).
"""

from __future__ import annotations

import functools
import html
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..preprocessing import MAX_IMAGE_PIXELS
from .api import MAX_CLASSES, MAX_IMAGES_PER_CLASS, MAX_QUERIES, AdaptedClassifier, FewShotModel, Prediction, load
from .assessment import Assessment
from .auth import AUTH_ENV, Credentials, is_loopback

UI_CLASSES = 10  # class slots in the page (5 shown at first, "Add class" reveals more)
# One request adapts and classifies in 0.1-0.3 s on a 2-core CPU, and throughput stays flat from 1 to
# 64 concurrent clients (benchmarks/serve_throughput.py): 2 at a time use both cores, and 16 waiting
# keep the longest wait to a few seconds before anyone is turned away.
CONCURRENCY = 2
QUEUE_SIZE = 16
#: The "Example" button's task: Omniglot drawings (MIT, licence beside them).
EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "omniglot"
EXAMPLE_MODEL = "omniglot-conv4"
SHOWN_AT_START = 5
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per file

LIMITS_TEXT = (
    f"Limits: up to {MAX_CLASSES} classes and {MAX_IMAGES_PER_CLASS} images per class, {MAX_QUERIES} queries per "
    f"request, {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_IMAGE_PIXELS // 10**6} megapixels per image."
)


def readable_errors(escape: bool = True) -> Callable[[Callable], Callable]:
    """Show bad input as its message and anything unexpected as a short notice, never a traceback.

    The page renders error messages as HTML, so its handlers (``escape=True``) escape them: a class
    named ``<b>x</b>`` shows as typed. API clients (``escape=False``) get the plain text.
    """

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(*args: Any) -> Any:
            try:
                return handler(*args)
            except gr.Error:
                raise
            except ValueError as error:
                raise gr.Error(html.escape(str(error)) if escape else str(error), print_exception=False) from None
            except Exception as error:  # keep serving; the details stay in the server log
                raise gr.Error(f"Something went wrong ({type(error).__name__}); please try again.") from error

        return wrapper

    return decorate


def drawn_image(sketch: Any) -> Image.Image | None:
    """The sketchpad's drawing, or None when nothing was drawn."""
    if not isinstance(sketch, dict) or sketch.get("composite") is None:
        return None
    composite = sketch["composite"]
    image = composite if isinstance(composite, Image.Image) else Image.fromarray(np.asarray(composite))
    pixels = np.asarray(image.convert("RGBA"))
    drawn = pixels[..., 3] > 0 if image.mode in ("RGBA", "LA") else pixels[..., :3].min(-1) < 250
    return image if drawn.any() else None


def file_paths(files: Any) -> list[str]:
    """Paths of gr.File uploads, refusing files over the size limit before decoding them."""
    paths = []
    for item in files or []:
        path = item if isinstance(item, str) else getattr(item, "name", None) or item.get("path")
        if os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise ValueError(f"{Path(path).name} is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        paths.append(path)
    return paths


def loss_plot(losses: list[float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 2.4))
    axis.plot(range(len(losses)), losses, marker="o")
    axis.set_xlabel("inner step")
    axis.set_ylabel("support loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    plt.close(figure)
    return figure


def confusion_plot(assessment: Assessment):
    """The support set's held-out confusions as a picture: true class by row, predicted by column
    (None when there is no estimate: every class has a single image)."""
    if assessment.accuracy is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, ways = assessment.confusion, len(assessment.labels)
    side = min(8.0, 2.4 + 0.45 * ways)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(counts, cmap="Blues")
    ticks = [label if len(label) <= 14 else label[:13] + "…" for label in assessment.labels]
    axis.set_xticks(range(ways), ticks, rotation=45, ha="right")
    axis.set_yticks(range(ways), ticks)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (held out)")
    if ways <= 12:  # the counts, where they still fit in their cells
        peak = max(max(row) for row in counts) or 1
        for t, row in enumerate(counts):
            for q, count in enumerate(row):
                if count:
                    axis.text(q, t, count, ha="center", va="center", color="white" if count > peak / 2 else "black")
    figure.tight_layout()
    plt.close(figure)
    return figure


#: Below this top probability the page marks a query's class as unsure.
UNSURE_BELOW = 0.5


def top3_caption(prediction: Prediction) -> str:
    """The top three classes, marked "none of these?" (a rejected query) or "unsure" (top probability below half)."""
    best = sorted(prediction.probabilities.items(), key=lambda item: -item[1])[:3]
    text = " · ".join(f"{label} {100 * p:.0f}%" for label, p in best)
    if prediction.unknown:
        return f"none of these? (closest: {text})"
    return f"unsure: {text}" if best[0][1] < UNSURE_BELOW else text


def predictions_for(adapted: AdaptedClassifier, queries: list) -> list[Prediction]:
    """The queries' verdicts, rejecting those that are none of the classes where the file is calibrated for it."""
    return adapted.predict(queries, reject_unknown=bool(adapted.model.recipe.unknown_calibration))


def describe(name: str, model: FewShotModel) -> str:
    """One line on what a model was meta-trained on and how it adapts."""
    recipe, size = model.recipe, model.preprocessing.image_size
    colour = "colour" if model.preprocessing.channels == 3 else "grayscale"
    members = recipe.network.get("members")
    architecture = f"ensemble of {len(members)} resnet12" if members else recipe.network["architecture"]
    return (f"**{name}**: `{recipe.algorithm}` {architecture} meta-trained on {recipe.dataset}, "
            f"{size}×{size} {colour} input; adapts in {recipe.test_steps} gradient steps.")


def build_app(models: Mapping[str, FewShotModel]) -> gr.Blocks:
    """The page and its handlers around the loaded models (the first is the default)."""
    if not models:
        raise ValueError("the app needs at least one model")
    default = next(iter(models))

    def model_named(name: str | None) -> tuple[str, FewShotModel]:
        name = name or default
        if name not in models:
            raise ValueError(f"no model named {name!r}; served: {', '.join(models)}")
        return name, models[name]

    @readable_errors()
    def add_drawing(sketch: Any, drawings: list) -> tuple[list, list, None]:
        image = drawn_image(sketch)
        if image is None:
            raise ValueError("draw something on the sketchpad first")
        drawings = drawings + [image]
        return drawings, drawings, None

    @readable_errors()
    def add_photo(photo: Image.Image | None, captured: list) -> tuple[list, list, None]:
        if photo is None:
            raise ValueError("take a photo with the camera first")
        captured = captured + [photo]
        return captured, captured, None

    @readable_errors()
    def switch_model(name: str) -> tuple[None, str, str, None, None]:
        name, model = model_named(name)
        return None, describe(name, model), "Model switched: press **Adapt** again.", None, None

    @readable_errors()
    def adapt_to_support(model_name: str, *slots: Any) -> tuple[AdaptedClassifier, str, Any, Any]:
        _, model = model_named(model_name)
        names, uploads, drawings = slots[:UI_CLASSES], slots[UI_CLASSES : 2 * UI_CLASSES], slots[2 * UI_CLASSES :]
        support: dict[str, list] = {}
        for name, files, drawn in zip(names, uploads, drawings):
            images = file_paths(files) + list(drawn or [])
            if not (name or "").strip() and not images:
                continue  # an unused slot
            if not (name or "").strip():
                raise ValueError("every class with images needs a name")
            if name.strip() in support:
                raise ValueError(f"class name {name.strip()!r} is used twice")
            support[name.strip()] = images
        adapted = model.adapt(support)
        assessment = adapted.assessment()
        status = (f"Adapted to {len(adapted.labels)} classes in {1000 * adapted.seconds:.0f} ms "
                  f"({len(adapted.support_losses)} steps on {model.device.type.upper()}).\n\n"
                  + html.escape(assessment.summary()))  # class names are the user's text
        return adapted, status, loss_plot(adapted.support_losses), confusion_plot(assessment)

    @readable_errors()
    def classify_queries(adapted: AdaptedClassifier | None, files: Any, sketch: Any, photo: Any) -> tuple[list, dict]:
        if adapted is None:
            raise ValueError("press Adapt first")
        queries: list = file_paths(files)
        drawing = drawn_image(sketch)
        if drawing is not None:
            queries.append(drawing)
        if photo is not None:
            queries.append(photo)
        predictions = predictions_for(adapted, queries)
        gallery = [(q if isinstance(q, Image.Image) else str(q), top3_caption(p)) for q, p in zip(queries, predictions)]
        return gallery, predictions[-1].probabilities

    @readable_errors()
    def export_classifier(adapted: AdaptedClassifier | None) -> str:
        if adapted is None:
            raise ValueError("press Adapt first")
        path = Path(tempfile.mkdtemp(prefix="fewshot-onnx-")) / "fewshot-classifier.onnx"
        adapted.export_onnx(path)
        return str(path)

    def load_example() -> tuple:
        """The shipped example task in the first class slots and the queries, on the handwriting model."""
        classes = sorted(p for p in (EXAMPLE_DIR / "support").iterdir() if p.is_dir())
        names = [c.name for c in classes] + [""] * (UI_CLASSES - len(classes))
        files = [sorted(map(str, c.glob("*.png"))) for c in classes] + [None] * (UI_CLASSES - len(classes))
        queries = sorted(map(str, (EXAMPLE_DIR / "queries").glob("*.png")))
        status = (f"Example loaded: {len(classes)} handwritten Korean characters, 2 drawings each, on the "
                  f"{EXAMPLE_MODEL} model. Press **Adapt**, then **Classify**.")
        return (EXAMPLE_MODEL, *names, *files, queries, status)

    @readable_errors(escape=False)
    def classify_api(support_files: Any, labels_json: str, query_files: Any, model_name: str = "") -> dict[str, Any]:
        """One-call API: support files with one label each (a JSON list), query files, optionally a model name."""
        model_name, model = model_named(model_name)
        try:
            labels = json.loads(labels_json)
        except (TypeError, json.JSONDecodeError):
            raise ValueError("labels must be a JSON list with one class name per support file") from None
        paths = file_paths(support_files)
        if not isinstance(labels, list) or len(labels) != len(paths):
            count = len(labels) if isinstance(labels, list) else 0
            raise ValueError(f"got {len(paths)} support files but {count} labels")
        support: dict[str, list] = {}
        for label, path in zip(labels, paths):
            support.setdefault(str(label).strip(), []).append(path)
        adapted = model.adapt(support)
        predictions = predictions_for(adapted, file_paths(query_files))
        return {"labels": adapted.labels, "predictions": [p.probabilities for p in predictions],
                "verdicts": [{k: v for k, v in p.to_dict().items() if k != "probabilities"} for p in predictions],
                "adapt_seconds": round(adapted.seconds, 4), "model": model_name,
                "assessment": adapted.assessment().to_dict()}

    with gr.Blocks(title="fewshot-serve") as app:
        gr.Markdown(
            "# fewshot-serve\nName a few classes, give each one or more images (upload, draw, or take photos with "
            "your camera), press **Adapt**, "
            f"then classify new images.\n\n{LIMITS_TEXT}"
        )
        with gr.Row():
            example_button = gr.Button("Example", size="sm", elem_id="example", scale=0,
                                       visible=EXAMPLE_MODEL in models and EXAMPLE_DIR.is_dir())
            model_menu = gr.Dropdown(list(models), value=default, label="Model", interactive=len(models) > 1,
                                     elem_id="model", scale=1)
            model_info = gr.Markdown(describe(default, models[default]), elem_id="model-info")
        adapted_state = gr.State(None)
        names, uploads, drawings, slots = [], [], [], []
        with gr.Row():
            for index in range(UI_CLASSES):
                with gr.Column(visible=index < SHOWN_AT_START, min_width=220) as slot:
                    name = gr.Textbox(label=f"Class {index + 1} name", max_length=100, elem_id=f"class-{index}-name")
                    files = gr.File(label="Upload images", file_count="multiple", file_types=["image"],
                                    elem_id=f"class-{index}-files")
                    sketch = gr.Sketchpad(label="…or draw", type="pil", height=220, canvas_size=(280, 280))
                    add = gr.Button("Add drawing", size="sm")
                    camera = gr.Image(label="…or take photos", sources=["webcam"], type="pil", height=220,
                                      elem_id=f"class-{index}-camera")
                    add_camera = gr.Button("Add photo", size="sm", elem_id=f"class-{index}-add-photo")
                    drawn = gr.State([])
                    gallery = gr.Gallery(label="Drawings and photos", height=90, columns=6,
                                         elem_id=f"class-{index}-captured")
                    add.click(add_drawing, [sketch, drawn], [drawn, gallery, sketch], api_visibility="private")
                    add_camera.click(add_photo, [camera, drawn], [drawn, gallery, camera], api_visibility="private")
                names.append(name)
                uploads.append(files)
                drawings.append(drawn)
                slots.append(slot)
        shown = gr.State(SHOWN_AT_START)
        add_class = gr.Button("Add class")
        add_class.click(lambda n: (min(n + 1, UI_CLASSES), *[gr.Column(visible=i < n + 1) for i in range(UI_CLASSES)]),
                        shown, [shown, *slots], api_visibility="private")
        adapt_button = gr.Button("Adapt", variant="primary", elem_id="adapt")
        with gr.Row():
            status = gr.Markdown(elem_id="status")
            plot = gr.Plot(label="Support loss during adaptation")
            confusions = gr.Plot(label="Held-out support images: true class by predicted class", elem_id="confusions")
        adapt_button.click(adapt_to_support, [model_menu, *names, *uploads, *drawings],
                           [adapted_state, status, plot, confusions], api_visibility="private")

        gr.Markdown("## Classify")
        with gr.Row():
            query_files = gr.File(label="Query images", file_count="multiple", file_types=["image"],
                                  elem_id="query-files")
            query_sketch = gr.Sketchpad(label="…or draw a query", type="pil", height=220, canvas_size=(280, 280))
            query_camera = gr.Image(label="…or take a photo", sources=["webcam"], type="pil", height=220,
                                    elem_id="query-camera")
        classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Row():
            results = gr.Gallery(label="Queries with their top-3 classes", columns=6, height=320)
            last = gr.Label(label="Last query", num_top_classes=3, elem_id="last-query")
        classify_button.click(classify_queries, [adapted_state, query_files, query_sketch, query_camera],
                              [results, last], api_visibility="private")
        with gr.Row():
            export_button = gr.Button("Prepare ONNX download")
            download = gr.DownloadButton("Download ONNX", value=None)
        export_button.click(export_classifier, adapted_state, download, api_visibility="private")
        model_menu.change(switch_model, model_menu, [adapted_state, model_info, status, plot, confusions],
                          api_visibility="private")
        example_button.click(load_example, None, [model_menu, *names, *uploads, query_files, status],
                             api_visibility="private")

        api_support = gr.File(file_count="multiple", visible=False)
        api_labels = gr.Textbox(visible=False)
        api_queries = gr.File(file_count="multiple", visible=False)
        api_model = gr.Textbox(value="", visible=False)
        api_result = gr.JSON(visible=False)
        gr.Button(visible=False).click(classify_api, [api_support, api_labels, api_queries, api_model], api_result,
                                       api_name="classify")
    return app


def load_models(paths: Sequence[str | os.PathLike], bf16: bool = False) -> dict[str, FewShotModel]:
    """Each model file, loaded, under its file name without the suffix (which must differ).

    ``bf16``: bfloat16 classification where the hardware has it (see :func:`fewshot_serve.load`).
    """
    models: dict[str, FewShotModel] = {}
    for path in paths:
        name = Path(path).stem
        if name in models:
            raise ValueError(f"two model files are named {name!r}; rename one")
        models[name] = load(path, bf16=bf16)
    return models


def launch(model_paths: str | os.PathLike | Sequence[str | os.PathLike], host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, block: bool = True, credentials: Credentials | None = None,
           allow_anonymous: bool = False, concurrency: int = CONCURRENCY, queue_size: int = QUEUE_SIZE,
           bf16: bool = False) -> gr.Blocks:
    """Load the model file(s) and serve the app; ``block=False`` returns once it is listening (tests).

    With ``credentials`` every page and API call needs a login. Serving anything but loopback (or a
    share link) without them is refused unless ``allow_anonymous``. At most ``concurrency`` requests
    per event run at once and ``queue_size`` wait; past that a request is refused at once with
    "Queue is full! Please try again." rather than waiting without bound. ``bf16``: see
    :func:`load_models`.
    """
    if credentials is None and not allow_anonymous and (share or not is_loopback(host)):
        raise ValueError(
            f"refusing to serve {'a share link' if share else host} without a login: give --auth-file FILE "
            f"(lines user:password) or ${AUTH_ENV}=user:password, or --no-auth to serve anyone who can reach it"
        )
    if concurrency < 1 or queue_size < 1:
        raise ValueError("concurrency and queue size must be at least 1")
    if isinstance(model_paths, (str, os.PathLike)):
        model_paths = [model_paths]
    app = build_app(load_models(model_paths, bf16))
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
               max_file_size=MAX_UPLOAD_BYTES, show_error=False, quiet=not block, auth=credentials,
               auth_message="fewshot-serve: log in" if credentials else None, allowed_paths=[str(EXAMPLE_DIR)])
    return app
