"""What the page's buttons do: plain functions of the page's values, wired to components in layout.py.

A class slot's values come as three runs of :data:`UI_CLASSES`: the names, the image galleries, and
the text boxes (one example a line); a model uses the galleries or the text boxes, by its kind.

Every handler puts its message first (the status area; see errors.py) and leaves the rest of the
page alone when the input is bad. The adapted classifier lives in the session's ``gr.State``; the
loaded models are shared and never modified, so sessions do not see each other's classes.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ...preprocessing import ImageError, open_image
from ...text_preprocessing import TextError, check_text
from ..api import MAX_QUERIES, AdaptedClassifier, FewShotModel
from .errors import ERROR_START, error_status, status_errors
from .examples import EXAMPLES, Example
from .model_menu import INPUTS_FOR_KIND, TEXT, describe, kind_of
from .plots import confusion_plot, loss_plot
from .results_table import QueryResult, results_html
from .session_files import SessionFolders
from .task_file import read_task, write_task
from .uploads import checked_uploads, drawn_image, file_paths, path_of, upload_problem

UI_CLASSES = 10  # class slots in the page (5 shown at first, "Add class" reveals more)
BURST_FRAMES = 5
#: Live classification runs at most once per this many seconds, and never more than half the time
#: (the wait after a frame is at least its own classification time), so other sessions keep the CPU.
LIVE_EVERY_S = 0.5
EXPORT_NAME = "fewshot-classifier.onnx"
#: The status once a class changed after Adapt.
OUT_OF_DATE = ("The classes changed since Adapt, so the classifier is out of date: **Classify** adapts again first "
               "(or press **Adapt**).")
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

    def first_for(self, texts: bool) -> str:
        """The first model served that takes texts (or images); the default where there is none."""
        return next((name for name, model in self.models.items() if model.takes_text == texts), self.default)

    def takes_text(self, model_name: str | None) -> bool:
        return self.model_named(model_name)[1].takes_text

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

    def images_or_texts(self, model_name: str | None) -> list[Any]:
        """For each class and the queries: the image inputs shown and the text box hidden, or the reverse;
        last, ONNX export, which is for images only."""
        text = self.takes_text(model_name)
        inputs = [gr.Column(visible=not text), gr.Textbox(visible=text)] * (UI_CLASSES + 1)
        return [*inputs, gr.Column(visible=not text)]

    @status_errors(outputs=5 + UI_CLASSES)
    def switch_model(self, model_name: str, *slots: Any) -> tuple:
        """A new model: the classifier adapted on the old one is dropped, and so are its results and plots;
        a class name whose slot holds nothing the new model takes (texts for a photo model, images for a
        text model) is cleared, so that Adapt does not refuse a class the user cannot see the examples of."""
        name, model = self.model_named(model_name)
        status = f"Switched to **{html.escape(kind_of(model))}** (`{name}`): press **Adapt** again."
        names, galleries, text_boxes = (slots[i * UI_CLASSES : (i + 1) * UI_CLASSES] for i in range(3))
        kept = [label if (lines_of(box) if model.takes_text else gallery) else ""
                for label, gallery, box in zip(names, galleries, text_boxes)]
        return status, None, "", *NO_PLOTS, *kept

    def forget_session(self, request: gr.Request) -> None:
        """The page was closed: its exports, task files and loaded images go."""
        self.folders.remove(session_of(request))

    # -- support images ------------------------------------------------------------------------------

    @status_errors(outputs=2)
    def keep_usable(self, gallery: Any) -> tuple[str, list[str]]:
        """After an upload: the class's images with refused and repeated files dropped, naming each refused one."""
        checked = checked_uploads(gallery)
        repeated = checked.repeated
        skipped = (f"Skipped {repeated} image{'s' if repeated != 1 else ''} already in this class."
                   if repeated else "")
        if not checked.refused:
            return skipped, checked.kept
        count = len(checked.refused)
        refusal = (f"Not added: {count} file{'s' if count != 1 else ''} that cannot be used: "
                   + "; ".join(checked.refused) + ". " + skipped)
        return error_status(refusal.strip()), checked.kept

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

    def support_from(self, slots: Sequence[Any], text: bool) -> dict[str, list[str]]:
        """``{class name: image paths}``, or with ``text`` ``{class name: texts}``, from the class slots'
        values (names, galleries, text boxes), skipping the empty ones."""
        names, galleries, text_boxes = (slots[i * UI_CLASSES : (i + 1) * UI_CLASSES] for i in range(3))
        noun = "texts" if text else "images"
        support: dict[str, list[str]] = {}
        for name, gallery, box in zip(names, galleries, text_boxes):
            label, examples = (name or "").strip(), lines_of(box) if text else file_paths(gallery)
            if not label and not examples:
                continue  # an unused slot
            if not label:
                raise ValueError(f"every class with {noun} needs a name")
            if label in support:
                raise ValueError(f"class name {label!r} is used twice")
            support[label] = examples
        return support

    @status_errors(outputs=6)
    def adapt(self, model_name: str, *slots: Any) -> tuple:
        """The classifier, its status and plots, and what it was adapted on (:meth:`adapted_on`)."""
        _, model = self.model_named(model_name)
        adapted = self.adapted(model, slots)
        return adapted_status(adapted), adapted, *adapted_plots(adapted), "", self.adapted_on(model_name, *slots)

    def adapted(self, model: FewShotModel, slots: Sequence[Any]) -> AdaptedClassifier:
        """``model`` adapted to the class slots; where a file is refused, the message names every bad file,
        not the first alone (found only then: checking every file first would decode each twice)."""
        try:
            return model.adapt(self.support_from(slots, model.takes_text))
        except ValueError:
            bad = [] if model.takes_text else bad_files(slots[UI_CLASSES : 2 * UI_CLASSES])
            if bad:
                raise ValueError(f"{len(bad)} file{'s' if len(bad) != 1 else ''} cannot be used; remove "
                                 f"{'it' if len(bad) == 1 else 'them'} from the class: " + "; ".join(bad)) from None
            raise

    def adapted_on(self, model_name: str, *slots: Any) -> tuple:
        """What a classifier adapted now is adapted on (the model and every class's name and examples):
        kept beside it, so that Classify can tell when the classes changed since."""
        name, model = self.model_named(model_name)
        return name, tuple((label, tuple(map(str, examples)))
                           for label, examples in self.support_from(slots, model.takes_text).items())

    def mark_out_of_date(self, status: str | None, adapted: AdaptedClassifier | None, adapted_on: tuple | None,
                         model_name: str, *slots: Any) -> Any:
        """After a class's name or texts were typed: where a classifier was adapted on other classes, say so in the
        status (under a refusal shown there, which stays), and that Classify will adapt again first."""
        if adapted is None or (status or "").endswith(OUT_OF_DATE):
            return gr.skip()
        try:
            if self.adapted_on(model_name, *slots) == adapted_on:
                return gr.skip()
        except ValueError:
            pass  # classes Adapt would refuse as they are: not what was adapted on either
        return f"{status}\n\n{OUT_OF_DATE}" if (status or "").startswith(ERROR_START) else OUT_OF_DATE

    @status_errors(outputs=6)
    def classify_current(self, adapted: AdaptedClassifier | None, adapted_on: tuple | None, model_name: str,
                         files: Any, sketch: Any, texts: str | None, *slots: Any) -> tuple:
        """Classify with a classifier of the classes as they are now: where none was adapted, or the classes
        or the model changed since Adapt, adapt first (and say so) instead of using the old one."""
        current = self.adapted_on(model_name, *slots)
        if adapted is not None and adapted_on == current:
            return *self.classified_status(adapted, files, sketch, texts), *(gr.skip(),) * 4
        _, model = self.model_named(model_name)
        fresh = self.adapted(model, slots)
        why = ("No classifier yet, so the classes were adapted first" if adapted is None
               else "The classes or the model changed since Adapt, so they were adapted again first")
        status, table = self.classified_status(fresh, files, sketch, texts)  # with the estimate
        status = f"{why}. {adapted_status(fresh, estimate=False)}\n\n{status}"
        return status, table, fresh, current, *adapted_plots(fresh)

    @status_errors(outputs=2)
    def classify(self, adapted: AdaptedClassifier | None, files: Any, sketch: Any,
                 texts: str | None) -> tuple[str, str]:
        """Each query on its own row; one that cannot be read is reported there and the rest are classified."""
        if adapted is None:
            raise ValueError("press Adapt first")
        return self.classified_status(adapted, files, sketch, texts)

    def classified_status(self, adapted: AdaptedClassifier, files: Any, sketch: Any,
                          texts: str | None) -> tuple[str, str]:
        """The queries classified by ``adapted``: the status and the results table (bad input raises)."""
        if adapted.model.takes_text:
            named: list[tuple[str, Any]] = [(text, text) for text in lines_of(texts)]
        else:
            named = [(Path(path).name, path) for path in file_paths(files)]
            drawing = drawn_image(sketch)
            if drawing is not None:
                named.append(("drawing", drawing))
        if not named:
            raise ValueError("write query texts, one a line, first" if adapted.model.takes_text
                             else "add query images (upload or draw) first")
        if len(named) > MAX_QUERIES:
            raise ValueError(f"{len(named)} queries; at most {MAX_QUERIES} per request")
        results = classified(adapted, named)
        failed = sum(result.prediction is None for result in results)
        status = f"Classified {len(results) - failed} of {len(results)} queries."
        if failed:
            status += f" {failed} could not be read: see {'its row' if failed == 1 else 'their rows'}."
        status += "\n\n" + html.escape(adapted.assessment().summary())  # the estimate stays in view
        return status, results_html(results, "text" if adapted.model.takes_text else "file")

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
        name, model = self.model_named(model_name)
        support = self.support_from(slots, model.takes_text)
        noun = "texts" if model.takes_text else "images"
        if not support:
            raise ValueError(f"nothing to save: name a class and give it {noun} first")
        path = write_task(self.folders.folder(session_of(request), "task") / TASK_NAME, name, support,
                          model.takes_text)
        count = sum(map(len, support.values()))
        return f"Task saved: {len(support)} classes, {count} {noun}.", gr.File(value=str(path), visible=True)

    @status_errors(outputs=3 + 3 * UI_CLASSES)
    def load_task(self, upload: Any, request: gr.Request) -> tuple:
        if upload is None:
            raise ValueError("choose a task file (.zip) to load")
        into = self.folders.folder(session_of(request), "loaded", f"{time.time_ns()}")
        model_name, support, text = read_task(file_paths([upload])[0], into)
        if model_name not in self.models or self.models[model_name].takes_text != text:
            model_name = self.first_for(texts=text)
        if self.models[model_name].takes_text != text:
            raise ValueError(f"this task holds {'texts' if text else 'images'}, and no model served here takes them")
        status = (f"Task loaded: {len(support)} classes, {sum(map(len, support.values()))} "
                  f"{'texts' if text else 'images'}, on {html.escape(kind_of(self.models[model_name]))}. "
                  "Press **Adapt**.")
        return (status, model_name, None, *slot_values(support, text))

    def example(self, kind: str) -> Example | None:
        example = EXAMPLES.get(kind)
        return example if example is not None and example.available() and self.first_of_kind(kind) else None

    @status_errors(outputs=6 + 3 * UI_CLASSES)
    def load_example(self, kind: str) -> tuple:
        """An example task in the class slots and the queries, on the first model of its kind; adapt afresh."""
        example = self.example(kind)
        if example is None:
            raise ValueError(f"no {kind.lower()} example here")
        support, queries, text = example.support(), example.queries(), kind == TEXT
        status = f"Example loaded: {example.description} Press **Adapt**, then **Classify**."
        return (status, self.first_of_kind(kind), None, "", None if text else queries,
                "\n".join(queries) if text else "", *slot_values(support, text))


def bad_files(galleries: Sequence[Any]) -> list[str]:
    """Every file of the class galleries that cannot be used, with why."""
    return [problem for gallery in galleries for path in map(path_of, gallery or [])
            if (problem := upload_problem(path))]


def adapted_status(adapted: AdaptedClassifier, estimate: bool = True) -> str:
    """What Adapt did, and (``estimate``) the support set's own estimate of the classifier."""
    steps = len(adapted.support_losses)
    done = (f"Adapted to {len(adapted.labels)} classes in {1000 * adapted.seconds:.0f} ms "
            f"({steps} step{'s' if steps != 1 else ''} on {adapted.model.device.type.upper()}).")
    return done + "\n\n" + html.escape(adapted.assessment().summary()) if estimate else done  # names: user's text


def adapted_plots(adapted: AdaptedClassifier) -> tuple[Any, Any]:
    """The inner loop's losses and the held-out support's confusions, shown (hidden while there is none:
    an empty plot is a tall blank box on a phone)."""
    confusions = confusion_plot(adapted.assessment())
    return gr.Plot(loss_plot(adapted.support_losses), visible=True), gr.Plot(confusions, visible=confusions is not None)


#: Both plots emptied and hidden (no classifier).
NO_PLOTS = (gr.Plot(None, visible=False), gr.Plot(None, visible=False))


def lines_of(box: str | None) -> list[str]:
    """A text box's non-empty lines, stripped: one example (or query) a line."""
    return [line.strip() for line in (box or "").splitlines() if line.strip()]


def slot_values(support: Mapping[str, list[str]], text: bool = False) -> list[Any]:
    """The class slots' names, galleries and text boxes for ``support`` (image paths, or with ``text``
    texts), the unused ones emptied."""
    if len(support) > UI_CLASSES:
        raise ValueError(f"the page holds {UI_CLASSES} classes; this task has {len(support)}")
    padding = [None] * (UI_CLASSES - len(support))
    names = [*support, *[""] * len(padding)]
    galleries = [None] * UI_CLASSES if text else [*support.values(), *padding]
    boxes = [*("\n".join(texts) for texts in support.values()), *[""] * len(padding)] if text else [""] * UI_CLASSES
    return [*names, *galleries, *boxes]


def predictions_for(adapted: AdaptedClassifier, queries: list) -> list:
    """The queries' verdicts, rejecting those that are none of the classes where the file is calibrated for it."""
    return adapted.predict(queries, reject_unknown=bool(adapted.model.recipe.unknown_calibration))


def classified(adapted: AdaptedClassifier, named: list[tuple[str, Any]]) -> list[QueryResult]:
    """``(name, image or text)`` queries as table rows: checked one by one (images decoded), the usable
    ones classified together."""
    results: list[QueryResult] = []
    readable = []
    for index, (name, query) in enumerate(named):
        try:
            if adapted.model.takes_text:
                check_text(query, f"query #{index + 1}")
                image = None
            else:
                # a file's name is in its row already, and open_image adds a path's name to the message itself
                label = f"query #{index + 1}" if isinstance(query, str) else f"query #{index + 1} ({name})"
                image = open_image(query, label)
        except (ImageError, TextError) as error:
            results.append(QueryResult(name, None, error=str(error)))
            continue
        results.append(QueryResult(name, image, text=query if adapted.model.takes_text else None))
        readable.append(index)
    predictions = predictions_for(adapted, [results[i].query for i in readable]) if readable else []
    for index, prediction in zip(readable, predictions):
        results[index] = replace(results[index], prediction=prediction)
    return results
