"""What the page's buttons do: plain functions of the page's values, wired to components in layout.py.

Every handler puts its message first (the status area; see errors.py) and leaves the rest of the
page alone when the input is bad. The adapted classifier lives in the session's ``gr.State``; the
loaded models are shared and never modified, so sessions do not see each other's classes.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ...preprocessing import ImageError, open_image
from ..api import MAX_QUERIES, AdaptedClassifier, FewShotModel
from .errors import status_errors
from .examples import EXAMPLES, Example
from .model_menu import INPUTS_FOR_KIND, describe, kind_of
from .plots import confusion_plot, loss_plot
from .results_table import QueryResult, results_html
from .session_files import SessionFolders
from .task_file import read_task, write_task
from .uploads import distinct_paths, drawn_image, file_paths

UI_CLASSES = 10  # class slots in the page (5 shown at first, "Add class" reveals more)
BURST_FRAMES = 5
#: Live classification runs at most once per this many seconds, and never more than half the time
#: (the wait after a frame is at least its own classification time), so other sessions keep the CPU.
LIVE_EVERY_S = 0.5
EXPORT_NAME = "fewshot-classifier.onnx"
TASK_NAME = "fewshot-task.zip"


@dataclass(frozen=True)
class Capture:
    """Camera frames asked for (1 for Capture, :data:`BURST_FRAMES` for a burst) and those taken so far."""

    wanted: int
    frames: tuple[Image.Image, ...] = ()


@dataclass
class LiveThrottle:
    """When the next live frame may be classified (per session)."""

    next_at: float = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.next_at

    def classified(self, started: float) -> None:
        finished = time.monotonic()
        self.next_at = finished + max(LIVE_EVERY_S - (finished - started), finished - started)


def session_of(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None)


class PageHandlers:
    """The page's handlers around the loaded models (the first one is the default)."""

    def __init__(self, models: Mapping[str, FewShotModel], folders: SessionFolders) -> None:
        if not models:
            raise ValueError("the app needs at least one model")
        self.models, self.folders = dict(models), folders
        self.default = next(iter(self.models))

    def model_named(self, name: str | None) -> tuple[str, FewShotModel]:
        name = name or self.default
        if name not in self.models:
            raise ValueError(f"no model named {name!r}; served: {', '.join(self.models)}")
        return name, self.models[name]

    def first_of_kind(self, kind: str) -> str | None:
        return next((name for name, model in self.models.items() if kind_of(model) == kind), None)

    # -- the inputs shown --------------------------------------------------------------------------

    def camera_and_drawing(self, model_name: str | None, show_every_input: bool) -> tuple[bool, bool]:
        """Whether the camera and the drawing tabs show: the model's kind decides, unless every input is asked for."""
        _, model = self.model_named(model_name)
        wanted = {"camera", "draw"} if show_every_input else set(INPUTS_FOR_KIND[kind_of(model)])
        return "camera" in wanted, "draw" in wanted

    def details_and_tabs(self, model_name: str | None, show_every_input: bool) -> list[Any]:
        """The model's details line, then for each class and the query: its tab set back on Upload, and
        the camera and drawing tabs shown or not ("hidden": Gradio 6 ignores ``visible=False`` on a tab)."""
        camera, draw = self.camera_and_drawing(model_name, show_every_input)
        group = [gr.Tabs(selected="upload"), gr.Tab(visible=camera or "hidden"), gr.Tab(visible=draw or "hidden")]
        return [describe(*self.model_named(model_name)), *group * (UI_CLASSES + 1)]

    @status_errors(outputs=5)
    def switch_model(self, model_name: str) -> tuple:
        """A new model: the classifier adapted on the old one is dropped, and so are its results and plots."""
        name, model = self.model_named(model_name)
        status = f"Switched to **{html.escape(kind_of(model))}** (`{name}`): press **Adapt** again."
        return status, None, "", None, None

    def forget_session(self, request: gr.Request) -> None:
        """The page was closed: its exports, task files and loaded images go."""
        self.folders.remove(session_of(request))

    # -- support images ------------------------------------------------------------------------------

    @status_errors(outputs=2)
    def keep_distinct(self, gallery: Any) -> tuple[str, list[str]]:
        """After an upload: the class's images with repeated files dropped (and a word on how many)."""
        images = file_paths(gallery)
        kept = distinct_paths(images)
        dropped = len(images) - len(kept)
        status = f"Skipped {dropped} image{'s' if dropped != 1 else ''} already in this class." if dropped else ""
        return status, kept

    @status_errors(outputs=3)
    def add_drawing(self, sketch: Any, gallery: Any) -> tuple[str, list, None]:
        image = drawn_image(sketch)
        if image is None:
            raise ValueError("draw something on the sketchpad first")
        return "", [*file_paths(gallery), image], None

    def camera_frame(self, frame: Image.Image | None, capture: Capture | None, gallery: Any) -> tuple:
        """While a capture is pending, collect the camera's frames; with the last one, add them all to the class.

        All at once because the gallery a frame arrives with is the page's value when the frame was
        sent: frames added one by one would each be overwritten by the next frame's older gallery.
        """
        if frame is None or capture is None:
            return gr.skip(), gr.skip()
        frames = (*capture.frames, frame)
        if len(frames) < capture.wanted:
            return Capture(capture.wanted, frames), gr.skip()
        return None, [*file_paths(gallery), *frames]

    # -- adapt and classify --------------------------------------------------------------------------

    def support_from(self, names: Sequence[str | None], galleries: Sequence[Any]) -> dict[str, list[str]]:
        """``{class name: image paths}`` from the class slots, skipping the empty ones."""
        support: dict[str, list[str]] = {}
        for name, gallery in zip(names, galleries):
            label, images = (name or "").strip(), file_paths(gallery)
            if not label and not images:
                continue  # an unused slot
            if not label:
                raise ValueError("every class with images needs a name")
            if label in support:
                raise ValueError(f"class name {label!r} is used twice")
            support[label] = images
        return support

    @status_errors(outputs=5)
    def adapt(self, model_name: str, *slots: Any) -> tuple:
        _, model = self.model_named(model_name)
        adapted = model.adapt(self.support_from(slots[:UI_CLASSES], slots[UI_CLASSES:]))
        assessment = adapted.assessment()
        steps = len(adapted.support_losses)
        status = (f"Adapted to {len(adapted.labels)} classes in {1000 * adapted.seconds:.0f} ms "
                  f"({steps} step{'s' if steps != 1 else ''} on {model.device.type.upper()}).\n\n"
                  + html.escape(assessment.summary()))  # class names are the user's text
        return status, adapted, loss_plot(adapted.support_losses), confusion_plot(assessment), ""

    @status_errors(outputs=2)
    def classify(self, adapted: AdaptedClassifier | None, files: Any, sketch: Any) -> tuple[str, str]:
        """Each query on its own row; one that cannot be read is reported there and the rest are classified."""
        if adapted is None:
            raise ValueError("press Adapt first")
        named: list[tuple[str, Any]] = [(Path(path).name, path) for path in file_paths(files)]
        drawing = drawn_image(sketch)
        if drawing is not None:
            named.append(("drawing", drawing))
        if not named:
            raise ValueError("add query images (upload or draw) first")
        if len(named) > MAX_QUERIES:
            raise ValueError(f"{len(named)} queries; at most {MAX_QUERIES} per request")
        results = classified(adapted, named)
        failed = sum(result.prediction is None for result in results)
        status = f"Classified {len(results) - failed} of {len(results)} queries."
        if failed:
            status += f" {failed} could not be read: see {'its row' if failed == 1 else 'their rows'}."
        return status, results_html(results)

    def live_frame(self, adapted: AdaptedClassifier | None, frame: Image.Image | None,
                   throttle: LiveThrottle | None) -> tuple:
        """The camera's current frame classified, as often as :class:`LiveThrottle` allows."""
        throttle = throttle or LiveThrottle()
        if adapted is None or frame is None or not throttle.ready():
            return gr.skip(), throttle
        started = time.monotonic()
        probabilities = predictions_for(adapted, [frame])[0].probabilities
        throttle.classified(started)
        return probabilities, throttle

    # -- files: ONNX, task, examples -----------------------------------------------------------------

    @status_errors(outputs=2)
    def export_onnx(self, adapted: AdaptedClassifier | None, request: gr.Request) -> tuple[str, Any]:
        if adapted is None:
            raise ValueError("press Adapt first")
        path = self.folders.folder(session_of(request), "export") / EXPORT_NAME
        adapted.export_onnx(path)
        megabytes = path.stat().st_size / 2**20
        status = f"ONNX file ready: {EXPORT_NAME} ({megabytes:.1f} MB), {len(adapted.labels)} classes."
        return status, gr.File(value=str(path), visible=True)

    @status_errors(outputs=2)
    def save_task(self, request: gr.Request, model_name: str, *slots: Any) -> tuple[str, Any]:
        # the request comes first: Gradio inserts it by position, which a parameter after *slots has not
        name, _ = self.model_named(model_name)
        support = self.support_from(slots[:UI_CLASSES], slots[UI_CLASSES:])
        if not support:
            raise ValueError("nothing to save: name a class and give it images first")
        path = write_task(self.folders.folder(session_of(request), "task") / TASK_NAME, name, support)
        count = sum(map(len, support.values()))
        return f"Task saved: {len(support)} classes, {count} images.", gr.File(value=str(path), visible=True)

    @status_errors(outputs=3 + 2 * UI_CLASSES)
    def load_task(self, upload: Any, request: gr.Request) -> tuple:
        if upload is None:
            raise ValueError("choose a task file (.zip) to load")
        into = self.folders.folder(session_of(request), "loaded", f"{time.time_ns()}")
        model_name, support = read_task(file_paths([upload])[0], into)
        if model_name not in self.models:
            model_name = self.default
        status = (f"Task loaded: {len(support)} classes, {sum(map(len, support.values()))} images, on "
                  f"{html.escape(kind_of(self.models[model_name]))}. Press **Adapt**.")
        return (status, model_name, None, *slot_values(support))

    def example(self, kind: str) -> Example | None:
        example = EXAMPLES.get(kind)
        return example if example is not None and example.available() and self.first_of_kind(kind) else None

    @status_errors(outputs=5 + 2 * UI_CLASSES)
    def load_example(self, kind: str) -> tuple:
        """An example task in the class slots and the queries, on the first model of its kind; adapt afresh."""
        example = self.example(kind)
        if example is None:
            raise ValueError(f"no {kind.lower()} example here")
        support = example.support()
        status = f"Example loaded: {example.description} Press **Adapt**, then **Classify**."
        return (status, self.first_of_kind(kind), None, "", example.queries(), *slot_values(support))


def slot_values(support: Mapping[str, list[str]]) -> list[Any]:
    """The class slots' names, then their galleries, for ``support`` (unused slots emptied)."""
    if len(support) > UI_CLASSES:
        raise ValueError(f"the page holds {UI_CLASSES} classes; this task has {len(support)}")
    padding = UI_CLASSES - len(support)
    return [*support, *[""] * padding, *support.values(), *[None] * padding]


def predictions_for(adapted: AdaptedClassifier, queries: list) -> list:
    """The queries' verdicts, rejecting those that are none of the classes where the file is calibrated for it."""
    return adapted.predict(queries, reject_unknown=bool(adapted.model.recipe.unknown_calibration))


def classified(adapted: AdaptedClassifier, named: list[tuple[str, Any]]) -> list[QueryResult]:
    """``(name, image)`` queries as table rows: decoded one by one, the readable ones classified together."""
    results: list[QueryResult] = []
    readable = []
    for index, (name, query) in enumerate(named):
        try:
            image = open_image(query, f"query #{index + 1} ({name})")
        except ImageError as error:
            results.append(QueryResult(name, None, error=str(error)))
            continue
        results.append(QueryResult(name, image))
        readable.append(index)
    predictions = predictions_for(adapted, [results[i].image for i in readable]) if readable else []
    for index, prediction in zip(readable, predictions):
        results[index] = QueryResult(results[index].name, results[index].image, prediction)
    return results
