"""The page: its components and which handler each one calls (the handlers themselves are in handlers.py).

From top to bottom: the model menu and its details line; a column per class (a name, its images
with upload and remove, and the camera or drawing tab the model's kind calls for; for a text model,
a box of example texts instead); Adapt with its status, loss curve and confusions; the queries
(upload, draw, or the live camera; or a box of texts); the results table; then ONNX export and the
task file. The status area under Adapt holds every message.
"""

from __future__ import annotations

from collections.abc import Mapping

import gradio as gr

from ...preprocessing import MAX_IMAGE_PIXELS
from ..api import MAX_CLASSES, MAX_IMAGES_PER_CLASS, MAX_QUERIES, FewShotModel
from .api_endpoint import add_classify_endpoint
from .handlers import BURST_FRAMES, LIVE_EVERY_S, UI_CLASSES, Capture, PageHandlers
from .model_menu import HANDWRITING, PHOTOS, TEXT, describe, menu_choices
from .onnx_usage import ONNX_USAGE
from .session_files import SessionFolders
from .uploads import MAX_UPLOAD_BYTES

#: Class slots shown before any is used (a phone shows each one as a tall column; "Add class" shows more).
SHOWN_AT_START = 3
#: An adapted classifier, and the page's other per-session values, are dropped this long after they were
#: set, by default: memory stays bounded however many people visit (see tests/test_memory.py).
SESSION_LIFETIME_S = 3600
SKETCH = {"type": "pil", "height": 300, "canvas_size": (280, 280), "show_label": False}
LIMITS_TEXT = (
    f"Limits: up to {UI_CLASSES} classes on this page ({MAX_CLASSES} through the API) and {MAX_IMAGES_PER_CLASS} "
    f"images per class, {MAX_QUERIES} queries per "
    f"request, {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_IMAGE_PIXELS // 10**6} megapixels per image."
)
PAGE_CSS = """
.fs-images .grid-container { grid-template-columns: repeat(auto-fill, minmax(56px, 1fr)) !important; }
.fs-images .thumbnail-item { width: 100%; height: auto; aspect-ratio: 1; }
.fs-error { color: var(--error-text-color, #b91c1c); }
.fs-hint { font-size: 0.85rem; color: var(--body-text-color-subdued); }
#model-info { font-size: 0.85rem; color: var(--body-text-color-subdued); }
/* a class's gallery grows to show every thumbnail, with their count; empty, it is a small drop box */
.fs-images:has(.gallery-item), .fs-images:has(.gallery-item) .gallery-container,
.fs-images:has(.gallery-item) .grid-wrap { height: auto !important; max-height: none !important; }
.fs-images .grid-container { counter-reset: images; grid-auto-rows: min-content !important; align-content: start; }
.fs-images .gallery-item { counter-increment: images; }
.fs-images .grid-container:has(.gallery-item)::after { content: counter(images) " in this class";
  grid-column: 1 / -1; font-size: 0.8rem; color: var(--body-text-color-subdued); }
@media (max-width: 640px) { #model { min-width: 100%; } .fs-upload-hint { display: none; }
  .fs-images:not(:has(.gallery-item)) { height: 110px !important; } }
"""

#: Gradio 6 leaves one upload button named by its untranslated key ("common.upload"): screen readers
#: read it out as such, so the page names it, now and whenever Gradio redraws it.
PAGE_JS = """
() => {
  const name = () => document.querySelectorAll('[aria-label="common.upload"], [title="common.upload"]')
    .forEach(e => ['aria-label', 'title'].forEach(key => e.setAttribute(key, 'Upload more images')));
  new MutationObserver(name).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     attributeFilter: ['aria-label', 'title']});
  name();
}
"""

#: After an export: start the download, so one click prepares and downloads (the file's row stays).
def start_download(file_id: str) -> str:
    """JavaScript that clicks the download link of the file component ``file_id``: one click on the button
    downloads, instead of a second click on the link that appears."""
    return f"() => {{ const link = document.querySelector('#{file_id} a[download]'); if (link) link.click(); }}"


def more_classes(shown: int) -> tuple:
    """One more class slot shown; at the page's limit the button says so and stops."""
    shown = min(shown + 1, UI_CLASSES)
    at_limit = shown == UI_CLASSES
    button = gr.Button(f"{UI_CLASSES} classes: this page's limit" if at_limit else "Add class",
                       interactive=not at_limit)
    return (shown, button, *[gr.Column(visible=i < shown) for i in range(UI_CLASSES)])


def filled_classes_shown(shown: int, *names: str) -> tuple:
    """After a task or an example filled the class slots: every named one shown, the rest as they were."""
    named = max((index + 1 for index, name in enumerate(names) if (name or "").strip()), default=0)
    return more_classes(max(shown, named) - 1)


def session_state(lifetime_s: float) -> gr.State:
    """A per-session value that Gradio drops ``lifetime_s`` after it was last set."""
    return gr.State(None, time_to_live=lifetime_s)


def class_slot(index: int, handlers: PageHandlers, status: gr.Markdown, visible_tabs: list[bool],
               lifetime_s: float, text: bool) -> tuple:
    """One class's column: its name, its images (upload, remove) with its camera and drawing tabs, and
    its box of texts; ``text``: the texts show, not the images (a text model)."""
    with gr.Column(visible=index < SHOWN_AT_START, min_width=200) as slot:
        name = gr.Textbox(label=f"Class {index + 1} name", max_length=100, elem_id=f"class-{index}-name")
        texts = gr.Textbox(label="Examples, one a line", lines=4, visible=text, elem_id=f"class-{index}-texts")
        with gr.Column(visible=not text, elem_id=f"class-{index}-image-inputs") as image_inputs:
            images, tabs = image_slot(index, handlers, status, visible_tabs, lifetime_s)
    return slot, name, images, texts, tabs, [image_inputs, texts]


def image_slot(index: int, handlers: PageHandlers, status: gr.Markdown, visible_tabs: list[bool],
               lifetime_s: float) -> tuple:
    """A class's images (upload, remove), and its camera and drawing tabs."""
    images = gr.Gallery(label="Images", interactive=True, file_types=["image"], columns=3, height=150,
                        format="png", object_fit="cover", buttons=[], allow_preview=False, elem_classes="fs-images",
                        elem_id=f"class-{index}-images")
    images.upload(handlers.keep_usable, images, [status, images], api_visibility="private")
    with gr.Tabs(selected="upload") as tab_set:
        with gr.Tab("Upload", id="upload"):
            # on a phone the box says the same ("Click to Upload"), and every line is scrolled past per class
            gr.Markdown("Drop image files on the box above, or click it.", elem_classes=["fs-hint", "fs-upload-hint"])
        with gr.Tab("Camera", id="camera", visible=visible_tabs[0],
                    elem_id=f"class-{index}-camera-tab") as camera_tab:
            camera = gr.Image(sources=["webcam"], streaming=True, type="pil", height=180, show_label=False,
                              elem_id=f"class-{index}-camera")
            with gr.Row():
                capture = gr.Button("Capture", size="sm", min_width=0, elem_id=f"class-{index}-capture")
                burst = gr.Button(f"Burst ×{BURST_FRAMES}", size="sm", min_width=0, elem_id=f"class-{index}-burst")
            capture_pending = session_state(lifetime_s)
            capture.click(lambda: Capture(1), None, capture_pending, api_visibility="private")
            burst.click(lambda: Capture(BURST_FRAMES), None, capture_pending, api_visibility="private")
            # one frame at a time: two at once would both take the count and the images before either wrote
            camera.stream(handlers.camera_frame, [camera, capture_pending, images], [capture_pending, images],
                          stream_every=0.2, concurrency_limit=1, show_progress="hidden", api_visibility="private")
        with gr.Tab("Draw", id="draw", visible=visible_tabs[1], elem_id=f"class-{index}-draw-tab") as draw_tab:
            sketch = gr.Sketchpad(**SKETCH, elem_id=f"class-{index}-sketch")
            add = gr.Button("Add drawing", size="sm", elem_id=f"class-{index}-add-drawing")
            add.click(handlers.add_drawing, [sketch, images], [status, images, sketch], api_visibility="private")
    return images, [tab_set, camera_tab, draw_tab]


def query_slot(visible_tabs: list[bool]) -> tuple:
    """The query images: upload, draw, or the live camera with its verdict."""
    with gr.Tabs(selected="upload") as query_tab_set:
        with gr.Tab("Upload", id="upload"):
            query_files = gr.File(label="Query images", file_count="multiple", file_types=["image"], height=120,
                                  elem_id="query-files")
        with gr.Tab("Draw", id="draw", visible=visible_tabs[1], elem_id="query-draw-tab") as query_draw_tab:
            query_sketch = gr.Sketchpad(**SKETCH, elem_id="query-sketch")
        with gr.Tab("Live camera", id="camera", visible=visible_tabs[0], elem_id="query-camera-tab") as camera_tab:
            with gr.Row():
                live_camera = gr.Image(sources=["webcam"], streaming=True, type="pil", height=260,
                                       show_label=False, elem_id="live-camera")
                live_result = gr.Label(num_top_classes=3, label="Live", elem_id="live-result")
    return query_files, query_sketch, live_camera, live_result, [query_tab_set, camera_tab, query_draw_tab]


def build_app(models: Mapping[str, FewShotModel], folders: SessionFolders | None = None,
              session_lifetime_s: float = SESSION_LIFETIME_S) -> gr.Blocks:
    """The page and its handlers around the loaded models (the first is the default).

    ``session_lifetime_s``: how long a session's adapted classifier and other values live after they
    were set (uploads are swept after four times that).
    """
    if session_lifetime_s <= 0:
        raise ValueError(f"the session lifetime must be positive, not {session_lifetime_s}")
    handlers = PageHandlers(models, folders or SessionFolders())
    default = handlers.default
    with gr.Blocks(title="fewshot-serve", delete_cache=(900, 4 * session_lifetime_s)) as app:
        gr.Markdown("# fewshot-serve\nName a few classes, give each one or more images (or texts), press "
                    f"**Adapt**, then classify new ones.\n\n{LIMITS_TEXT}")
        model_menu = gr.Dropdown(menu_choices(models), value=default, label="Model", elem_id="model",
                                 interactive=len(models) > 1)
        model_info = gr.Markdown(describe(default, models[default]), elem_id="model-info")
        with gr.Row():
            examples = {kind: gr.Button(f"Example: {kind.lower()}", size="sm", elem_id=f"example-{kind.lower()}",
                                        visible=handlers.example(kind) is not None, scale=0, min_width=150)
                        for kind in (PHOTOS, HANDWRITING, TEXT)}
            every_input = gr.Checkbox(False, label="Show every input (camera and drawing)", elem_id="every-input",
                                      container=False, scale=0, min_width=280)
        visible_tabs = list(handlers.camera_and_drawing(default, False))
        text = handlers.takes_text(default)
        adapted = session_state(session_lifetime_s)
        adapted_on = session_state(session_lifetime_s)  # what ``adapted`` was adapted on (Classify checks it)
        status = gr.Markdown(elem_id="status", render=False)

        slots, names, galleries, text_boxes, tabs, inputs = [], [], [], [], [], []
        with gr.Row():
            for index in range(UI_CLASSES):
                slot, name, images, texts, slot_tabs, slot_inputs = class_slot(index, handlers, status, visible_tabs,
                                                                               session_lifetime_s, text)
                slots.append(slot)
                names.append(name)
                galleries.append(images)
                text_boxes.append(texts)
                tabs += slot_tabs
                inputs += slot_inputs
        shown = gr.State(SHOWN_AT_START)
        add_class = gr.Button("Add class", size="sm", elem_id="add-class")
        add_class.click(more_classes, shown, [shown, add_class, *slots], api_visibility="private")

        adapt_button = gr.Button("Adapt", variant="primary", elem_id="adapt")
        status.render()
        with gr.Row():
            plot = gr.Plot(show_label=False, elem_id="loss-plot", visible=False)  # shown by Adapt
            confusions = gr.Plot(show_label=False, elem_id="confusions", visible=False)

        gr.Markdown("## Classify")
        query_texts = gr.Textbox(label="Query texts, one a line", lines=5, visible=text, elem_id="query-texts")
        with gr.Column(visible=not text, elem_id="query-image-inputs") as query_image_inputs:
            query_files, query_sketch, live_camera, live_result, query_tabs = query_slot(visible_tabs)
        tabs += query_tabs
        inputs += [query_image_inputs, query_texts]
        classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
        results = gr.HTML(elem_id="results")


        with gr.Accordion("Use it elsewhere: ONNX export and task file", open=True):
            with gr.Row():
                with gr.Column(visible=not text, elem_id="export-column") as export_column:
                    export_button = gr.Button("Export ONNX", elem_id="export")
                    export_file = gr.File(label="ONNX classifier", visible=False, interactive=False,
                                          elem_id="export-file")
                    gr.Markdown(ONNX_USAGE, elem_id="onnx-usage")
                with gr.Column():
                    save_button = gr.Button("Save task", elem_id="save-task")
                    task_file = gr.File(label="Task file", visible=False, interactive=False, elem_id="task-file")
                    load_button = gr.UploadButton("Load task", file_types=[".zip"], elem_id="load-task")
                    gr.Markdown("A task file holds the classes' names and images and the model's name: load it "
                                "here later to adapt again.")

        inputs.append(export_column)  # shown for image models only (images_or_texts)
        live_throttle = session_state(session_lifetime_s)
        add_classify_endpoint(handlers)  # first, so that the name "classify" is its own, not the page's event's
        slot_inputs = [*names, *galleries, *text_boxes]
        adapt_button.click(handlers.adapt, [model_menu, *slot_inputs],
                           [status, adapted, plot, confusions, results, adapted_on], api_visibility="private")
        # typed names and texts; not a gallery's changes: an upload's own check answers in the status (a refusal
        # must stay readable) and raced this mark; Classify adapts afresh after any change all the same
        for box in [*names, *text_boxes]:
            box.input(handlers.mark_out_of_date, [status, adapted, adapted_on, model_menu, *slot_inputs], status,
                      show_progress="hidden", api_visibility="private")
        classify_button.click(handlers.classify_current,
                              [adapted, adapted_on, model_menu, query_files, query_sketch, query_texts, *slot_inputs],
                              [status, results, adapted, adapted_on, plot, confusions], api_visibility="private")
        live_camera.stream(handlers.live_frame, [adapted, live_camera, live_throttle], [live_result, live_throttle],
                           stream_every=LIVE_EVERY_S, show_progress="hidden", api_visibility="private")
        # .input: a person chose another model (an example or a task file setting the menu is no reason to
        # overwrite their message); .change: whatever set it, the details line and the tabs follow
        model_menu.input(handlers.switch_model, [model_menu, *slot_inputs],
                         [status, adapted, results, plot, confusions, *names],
                         api_visibility="private")
        model_menu.change(handlers.images_or_texts, model_menu, inputs, api_visibility="private").then(
            handlers.details_and_tabs, [model_menu, every_input], [model_info, *tabs], api_visibility="private")
        # then: showing a column redraws its tabs as they were built, so their visibility is set after it
        every_input.change(handlers.details_and_tabs, [model_menu, every_input], [model_info, *tabs],
                           api_visibility="private")
        exported = export_button.click(handlers.export_onnx, adapted, [status, export_file], api_visibility="private")
        exported.success(None, js=start_download("export-file"))
        saved = save_button.click(handlers.save_task, [model_menu, *slot_inputs], [status, task_file],
                                  api_visibility="private")
        saved.success(None, js=start_download("task-file"))
        show_filled = {"fn": filled_classes_shown, "inputs": [shown, *names], "outputs": [shown, add_class, *slots],
                       "api_visibility": "private"}
        load_button.upload(handlers.load_task, load_button, [status, model_menu, adapted, *slot_inputs],
                           api_visibility="private").then(**show_filled)
        for kind, button in examples.items():
            button.click(lambda kind=kind: handlers.load_example(kind), None,
                         [status, model_menu, adapted, results, query_files, query_texts, *slot_inputs],
                         api_visibility="private").then(**show_filled)
        app.unload(handlers.forget_session)
    return app
