"""The page's handlers and pieces as plain functions (no server, no browser): the results table, per-query
errors, duplicates, the inputs each kind of model shows, the task file, the ONNX download and its snippet."""

import html
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from conftest import draw_glyph
from PIL import Image

import fewshot_serve
from fewshot_serve.serving.api import Prediction
from fewshot_serve.serving.web_app import PageHandlers, QueryResult, describe, menu_choices, results_html
from fewshot_serve.serving.web_app.errors import ERROR_START
from fewshot_serve.serving.web_app.handlers import UI_CLASSES, Capture, LiveThrottle
from fewshot_serve.serving.web_app.onnx_usage import ONNX_USAGE_CODE
from fewshot_serve.serving.web_app.session_files import SessionFolders
from fewshot_serve.serving.web_app.task_file import MANIFEST, read_task, write_task
from fewshot_serve.serving.web_app.uploads import MAX_UPLOAD_BYTES

MODELS = Path(__file__).resolve().parents[1] / "models"
#: Python that makes any import of torch fail, and that checks at the end that none happened.
BLOCK_TORCH = """import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
"""
TORCH_NOT_LOADED = "\nassert not any(name.split('.')[0] == 'torch' for name in sys.modules)\n"
SKIPPED = type(gr.skip())


class Request:
    """What handlers read of a gr.Request."""

    def __init__(self, session_hash: str) -> None:
        self.session_hash = session_hash


@pytest.fixture(scope="module")
def handlers(colour_model):
    models = {"omniglot-conv4": fewshot_serve.load(MODELS / "omniglot-conv4.safetensors"),
              "colour-conv4": fewshot_serve.load(colour_model),
              "omniglot-conv4-fomaml": fewshot_serve.load(MODELS / "omniglot-conv4-fomaml.safetensors")}
    folders = SessionFolders()
    yield PageHandlers(models, folders)
    folders.remove_all()


@pytest.fixture(scope="module")
def glyphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page-glyphs")
    paths = {}
    for c in range(3):
        for i in range(3):
            paths[c, i] = str(folder / f"c{c}_{i}.png")
            draw_glyph(60 + c, 10 * c + i).save(paths[c, i])
    return paths


def slots(support: dict) -> list:
    names, galleries = list(support), [[(path, None) for path in paths] for paths in support.values()]
    padding = UI_CLASSES - len(support)
    return [*names, *[""] * padding, *galleries, *[None] * padding, *[""] * UI_CLASSES]


def adapted_on(handlers, glyphs):
    support = {name: [glyphs[c, 0], glyphs[c, 1]] for c, name in enumerate(["alpha", "beta", "gamma"])}
    status, adapted, loss, confusions, results, adapted_on = handlers.adapt("omniglot-conv4", *slots(support))
    assert status.startswith("Adapted to 3 classes") and results == "" and loss is not None
    return adapted


def test_menu_names_are_plain_and_the_details_line_says_the_rest(handlers):
    assert menu_choices(handlers.models) == [("Handwriting", "omniglot-conv4"), ("Photos", "colour-conv4"),
                                             ("Handwriting (omniglot-conv4-fomaml)", "omniglot-conv4-fomaml")]
    line = describe("omniglot-conv4", handlers.models["omniglot-conv4"])
    steps = handlers.models["omniglot-conv4"].recipe.test_steps
    assert f"adapts in {steps} gradient step{'s' if steps != 1 else ''}." in line
    model = handlers.models["omniglot-conv4"]
    model.recipe.test_steps, saved = 1, model.recipe.test_steps
    try:
        assert describe("x", model).endswith("adapts in 1 gradient step.")
    finally:
        model.recipe.test_steps = saved


def test_each_kind_shows_its_inputs_and_every_input_on_request(handlers):
    assert handlers.camera_and_drawing("omniglot-conv4", False) == (False, True)
    assert handlers.camera_and_drawing("colour-conv4", False) == (True, False)
    assert handlers.camera_and_drawing("colour-conv4", True) == (True, True)
    details, *tabs = handlers.details_and_tabs("colour-conv4", False)
    assert "colour-conv4" in details and len(tabs) == 3 * (UI_CLASSES + 1)
    assert [tab.visible for tab in tabs[1:3]] == [True, "hidden"]


def test_the_results_table_shows_each_query_with_its_top_three_and_marks(handlers):
    image = draw_glyph(1, 1)
    sure = Prediction("a<b>", {"a<b>": 0.8, "b": 0.1, "c": 0.06, "d": 0.04}, 0.1, False)
    split = Prediction("a<b>", {"a<b>": 0.4, "b": 0.35, "c": 0.25}, 0.1, False, unsure=True)
    rejected = Prediction(None, {"a<b>": 0.7, "b": 0.3}, 9.0, True)
    table = results_html([QueryResult("one.png", image, sure), QueryResult("two.png", image, split),
                          QueryResult("<i>three</i>.png", image, rejected),
                          QueryResult("bad.png", None, error="query #4 (bad.png): not a readable image")])
    assert table.count('class="fs-row"') == 3 and table.count('class="fs-error"') == 1
    assert "a<b>" not in table and "<i>" not in table and html.escape("<i>three</i>.png") in table
    first = table.split('class="fs-row"')[1]
    assert first.count('class="fs-bar"') == 3 and ">d<" not in first  # the top three only, best first
    assert first.index(">80%<") < first.index(">10%<") < first.index(">6%<")
    assert ">unsure<" in table.split('class="fs-row"')[2] and ">none of these?<" in table
    assert "not a readable image" in table and table.count("data:image/jpeg;base64,") == 3
    assert results_html([]) == ""


def test_a_bad_query_gets_its_own_row_and_the_rest_are_classified(handlers, glyphs, tmp_path):
    adapted = adapted_on(handlers, glyphs)
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    queries = [(glyphs[0, 2], None), (str(broken), None), (glyphs[2, 2], None)]
    status, table = handlers.classify(adapted, queries, None, "")
    first, estimate = status.split("\n\n")
    assert first == "Classified 2 of 3 queries. 1 could not be read: see its row."
    assert "like these" in estimate  # the support set's estimate stays in view after Classify
    rows = table.split("<tr class=")[1:]
    assert 'fs-error' in rows[1] and "broken.png" in rows[1] and "not a readable image" in rows[1]
    assert rows[1].count("broken.png") == 2  # its name, and once in the reason: "query #2 (broken.png): ..."
    assert ">alpha<" in rows[0] and ">gamma<" in rows[2]


def test_classify_before_adapt_and_without_queries_say_what_to_do(handlers, glyphs):
    status, rest = handlers.classify(None, [glyphs[0, 0]], None, "")
    assert "press Adapt first" in status and isinstance(rest, SKIPPED)
    status, _ = handlers.classify(adapted_on(handlers, glyphs), [], None, "")
    assert "add query images" in status


def test_bad_support_is_reported_in_the_status_and_changes_nothing(handlers, glyphs):
    unnamed = slots({"alpha": [glyphs[0, 0]]})
    unnamed[UI_CLASSES + 1] = [(glyphs[1, 0], None)]  # images in slot 2, no name
    status, *rest = handlers.adapt("omniglot-conv4", *unnamed)
    assert "every class with images needs a name" in status and all(isinstance(r, SKIPPED) for r in rest)
    twice = slots({"alpha": [glyphs[0, 0]], "beta": [glyphs[1, 0]]})
    twice[1] = "alpha"
    assert "used twice" in handlers.adapt("omniglot-conv4", *twice)[0]


def test_uploading_the_same_image_again_keeps_one_copy(handlers, glyphs, tmp_path):
    copy = tmp_path / "renamed-copy.png"
    copy.write_bytes(Path(glyphs[0, 0]).read_bytes())
    status, kept = handlers.keep_usable([(glyphs[0, 0], None), (glyphs[0, 1], None), (str(copy), None)])
    assert kept == [glyphs[0, 0], glyphs[0, 1]] and status == "Skipped 1 image already in this class."
    assert handlers.keep_usable([(glyphs[0, 0], None)]) == ("", [glyphs[0, 0]])


def test_refused_files_never_enter_a_class_and_each_is_named(handlers, glyphs, tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    vast = tmp_path / "vast.png"
    Image.new("1", (8000, 6000)).save(vast)  # 48 megapixels in a small file
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(glyphs[0, 0]).read_bytes())
    gallery = [(glyphs[0, 0], None), (str(huge), None), (str(broken), None), (str(vast), None), (str(copy), None)]
    status, kept = handlers.keep_usable(gallery)
    assert kept == [glyphs[0, 0]] and status.startswith(ERROR_START)
    for words in ("Not added: 3 files", "huge.png is larger than 10 MB", "broken.png", "not a readable image",
                  "vast.png", "8000x6000 pixels", "Skipped 1 image already in this class."):
        assert words in status
    # a bad file that reaches Adapt all the same: every one is named
    support = {"alpha": [glyphs[0, 0], str(broken)], "beta": [glyphs[1, 0], str(huge), str(vast)]}
    message = handlers.adapt("omniglot-conv4", *slots(support))[0]
    assert "3 files cannot be used; remove them from the class" in message
    assert all(name in message for name in ("huge.png", "broken.png", "vast.png"))


def test_a_capture_adds_one_frame_and_a_burst_several_at_once(handlers, glyphs):
    frames, gallery = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(3)], [(glyphs[0, 0], None)]
    assert all(isinstance(v, SKIPPED) for v in handlers.camera_frame(frames[0], None, gallery))  # none pending
    assert handlers.camera_frame(frames[0], Capture(1), gallery) == (None, [glyphs[0, 0], frames[0]])
    pending = Capture(3)
    for frame in frames[:2]:  # a burst: frames held until the last, the page's gallery left alone
        pending, images = handlers.camera_frame(frame, pending, gallery)
        assert isinstance(images, SKIPPED)
    assert handlers.camera_frame(frames[2], pending, gallery) == (None, [glyphs[0, 0], *frames])
    assert all(isinstance(v, SKIPPED) for v in handlers.camera_frame(None, Capture(3), gallery))


def test_live_classification_waits_at_least_as_long_as_it_took(handlers, glyphs):
    adapted, frame = adapted_on(handlers, glyphs), Image.open(glyphs[1, 2])
    probabilities, throttle = handlers.live_frame(adapted, frame, None)
    assert max(probabilities, key=probabilities.get) == "beta"
    assert not throttle.ready()  # the next frame within LIVE_EVERY_S is skipped
    skipped, _ = handlers.live_frame(adapted, frame, throttle)
    assert isinstance(skipped, SKIPPED)
    slow = LiveThrottle()
    slow.classified(time.monotonic() - 2.0)  # a frame that took 2 s: the next waits 2 s more
    assert slow.next_at - time.monotonic() > 1.9
    assert isinstance(handlers.live_frame(None, frame, None)[0], SKIPPED)  # not adapted: nothing to say


def test_switching_models_drops_the_adapted_classifier_and_its_results(handlers):
    status, adapted, results, loss, confusions, *names = handlers.switch_model("colour-conv4", *slots({}))
    assert "Switched to **Photos**" in status and (adapted, results) == (None, "")
    assert [(plot.value, plot.visible) for plot in (loss, confusions)] == [(None, False)] * 2  # hidden until used


def test_switching_between_texts_and_images_clears_the_names_of_classes_left_empty(handlers, glyphs):
    text_task = slots({})
    text_task[0:2] = ["refund", "weather"]
    text_task[2 * UI_CLASSES : 2 * UI_CLASSES + 2] = ["I want my money back", "will it rain"]
    text_task[2], text_task[UI_CLASSES + 2] = "alpha", [(glyphs[0, 0], None)]  # a class with an image too
    names = list(handlers.switch_model("colour-conv4", *text_task)[5:])
    assert names == ["", "", "alpha", *[""] * (UI_CLASSES - 3)]


def test_the_onnx_download_lives_in_the_session_folder_and_its_snippet_runs(handlers, glyphs, monkeypatch):
    adapted = adapted_on(handlers, glyphs)
    status, file = handlers.export_onnx(adapted, Request("session-a"))
    path = Path(file.value if isinstance(file.value, str) else file.value["path"])
    assert status.startswith("ONNX file ready: fewshot-classifier.onnx (") and " MB)" in status
    assert path.parent == handlers.folders.folder("session-a", "export")
    handlers.export_onnx(adapted, Request("session-a"))  # a second export replaces the first
    assert len(list(path.parent.iterdir())) == 1
    monkeypatch.chdir(path.parent)
    Image.open(glyphs[2, 2]).save("photo.jpg")
    printed = []
    exec(ONNX_USAGE_CODE, {"print": printed.append})
    assert printed[0] == ["alpha", "beta", "gamma"] and max(printed[1][0], key=printed[1][0].get) == "gamma"
    # and where torch cannot be imported at all (the snippet's torch-free install)
    without_torch = subprocess.run([sys.executable, "-c", BLOCK_TORCH + ONNX_USAGE_CODE + TORCH_NOT_LOADED],
                                   capture_output=True, text=True, timeout=120)
    assert without_torch.returncode == 0, without_torch.stderr
    assert "gamma" in without_torch.stdout
    handlers.forget_session(Request("session-a"))
    assert not path.exists() and "session-a" not in handlers.folders.sessions()


def test_session_folders_stay_under_their_root_and_go_with_it(tmp_path):
    folders = SessionFolders()
    escaped = folders.folder("../../etc", "export")
    assert folders.root in escaped.parents
    folders.remove_all()
    assert not folders.root.exists()


def test_a_task_saved_from_the_page_loads_back_into_it(handlers, glyphs):
    support = {"alpha": [glyphs[0, 0], glyphs[0, 1]], "beta": [glyphs[1, 0]]}
    status, file = handlers.save_task(Request("session-b"), "colour-conv4", *slots(support))
    assert status == "Task saved: 2 classes, 3 images."
    saved = file.value if isinstance(file.value, str) else file.value["path"]
    status, model, adapted, *values = handlers.load_task(saved, Request("session-c"))
    assert status.startswith("Task loaded: 2 classes, 3 images, on Photos") and model == "colour-conv4"
    names, galleries = values[:UI_CLASSES], values[UI_CLASSES : 2 * UI_CLASSES]
    assert names[:3] == ["alpha", "beta", ""] and galleries[2] is None and adapted is None
    assert [Path(p).read_bytes() for p in galleries[0]] == [Path(p).read_bytes() for p in support["alpha"]]
    assert "nothing to save" in handlers.save_task(Request("b"), "colour-conv4", *slots({}))[0]


def hostile_zip(path: Path, manifest, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        if manifest is not None:
            archive.writestr(MANIFEST, manifest if isinstance(manifest, str) else json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("manifest, members, message", [
    (None, {}, "does not hold it"),
    ("{not json", {}, "not a fewshot-serve task file"),
    ({"format": "something else"}, {}, "not a fewshot-serve task file"),
    ({"format": "fewshot-serve task", "version": 99, "classes": []}, {}, "version 99"),
    ({"format": "fewshot-serve task", "version": 1, "classes": [{"name": f"c{i}", "images": []} for i in range(11)]},
     {}, "1 to 10 classes"),
    ({"format": "fewshot-serve task", "version": 1, "classes": ["a"]}, {}, "needs a name"),
    ({"format": "fewshot-serve task", "version": 1, "classes": [{"name": "a", "images": ["big.png"]}]},
     {"big.png": b"\0" * (MAX_UPLOAD_BYTES + 1)}, "larger than 10 MB"),
])
def test_a_hostile_task_file_is_refused_with_a_reason(tmp_path, manifest, members, message):
    with pytest.raises(ValueError, match=message):
        read_task(hostile_zip(tmp_path / "task.zip", manifest, members), tmp_path / "out")


def test_a_task_file_cannot_write_outside_its_folder(tmp_path):
    manifest = {"format": "fewshot-serve task", "version": 1, "model": "m",
                "classes": [{"name": "a", "images": ["../../evil.png"]}]}
    path = hostile_zip(tmp_path / "task.zip", manifest, {"../../evil.png": b"data"})
    model, support, text = read_task(path, tmp_path / "out")
    assert model == "m" and Path(support["a"][0]).parent == tmp_path / "out" and not text
    assert not (tmp_path.parent / "evil.png").exists()
    with pytest.raises(ValueError, match="not a zip file"):
        read_task(Path(__file__), tmp_path / "out")
    assert write_task(tmp_path / "again.zip", "m", support).exists()


def test_the_examples_load_on_the_first_model_of_their_kind(handlers):
    status, model, adapted, results, queries, query_texts, *values = handlers.load_example("Handwriting")
    assert status.startswith("Example loaded: 3 handwritten Korean characters") and model == "omniglot-conv4"
    assert adapted is None and results == "" and len(queries) == 3 and values[0] == "korean-03" and query_texts == ""
    status, model, *_ = handlers.load_example("Photos")
    assert status.startswith("Example loaded: 3 kinds of patterned cloth") and model == "colour-conv4"


def test_add_class_stops_at_the_pages_limit_and_says_so():
    from fewshot_serve.serving.web_app.handlers import UI_CLASSES
    from fewshot_serve.serving.web_app.layout import LIMITS_TEXT, more_classes

    shown, button, *slots = more_classes(5)
    assert shown == 6 and button.interactive and [s.visible for s in slots].count(True) == 6
    shown, button, *slots = more_classes(UI_CLASSES - 1)
    assert shown == UI_CLASSES and not button.interactive and "limit" in button.value
    assert all(s.visible for s in slots) and f"up to {UI_CLASSES} classes on this page" in LIMITS_TEXT


def test_classify_never_uses_a_classifier_of_classes_that_changed_since_adapt(handlers, glyphs):
    support = {name: [glyphs[c, 0], glyphs[c, 1]] for c, name in enumerate(["alpha", "beta", "gamma"])}
    _, adapted, _, _, _, adapted_on = handlers.adapt("omniglot-conv4", *slots(support))
    query = [glyphs[0, 2]]
    unchanged = handlers.classify_current(adapted, adapted_on, "omniglot-conv4", query, None, "", *slots(support))
    assert unchanged[0].startswith("Classified 1 of 1") and all(isinstance(v, SKIPPED) for v in unchanged[2:])
    # one image removed and a class renamed, then Classify without Adapt
    changed = {"ALPHA": [glyphs[0, 0]], "beta": support["beta"], "gamma": support["gamma"]}
    status, table, fresh, fresh_on, loss, _ = handlers.classify_current(adapted, adapted_on, "omniglot-conv4", query,
                                                                        None, "", *slots(changed))
    assert status.startswith("The classes or the model changed since Adapt, so they were adapted again first.")
    assert fresh.labels == ["ALPHA", "beta", "gamma"] and ">ALPHA<" in table and ">alpha<" not in table
    assert fresh_on == handlers.adapted_on("omniglot-conv4", *slots(changed)) != adapted_on and loss is not None
    other_model = handlers.classify_current(fresh, fresh_on, "omniglot-conv4-fomaml", query, None, "",
                                            *slots(changed))
    assert other_model[0].startswith("The classes or the model changed") and other_model[2].model is not fresh.model
    status, *_ = handlers.classify_current(None, None, "omniglot-conv4", query, None, "", *slots(support))
    assert status.startswith("No classifier yet, so the classes were adapted first.")
    status, *rest = handlers.classify_current(None, None, "omniglot-conv4", query, None, "", *slots({}))
    assert "at least 2 classes" in status and all(isinstance(v, SKIPPED) for v in rest)


def test_a_loaded_task_shows_every_class_it_filled():
    from fewshot_serve.serving.web_app.layout import SHOWN_AT_START, filled_classes_shown

    names = ["a", "b", "c", "d", "e", *[""] * (UI_CLASSES - 5)]
    shown, button, *slots = filled_classes_shown(SHOWN_AT_START, *names)
    assert shown == 5 and [s.visible for s in slots] == [True] * 5 + [False] * (UI_CLASSES - 5) and button.interactive
    assert filled_classes_shown(7, *names)[0] == 7  # slots a person opened stay open
    assert filled_classes_shown(SHOWN_AT_START, "a", *[""] * (UI_CLASSES - 1))[0] == SHOWN_AT_START


def test_a_change_to_the_classes_after_adapt_marks_the_classifier_out_of_date(handlers, glyphs):
    from fewshot_serve.serving.web_app.handlers import OUT_OF_DATE

    support = {name: [glyphs[c, 0], glyphs[c, 1]] for c, name in enumerate(["alpha", "beta", "gamma"])}
    status, adapted, _, _, _, adapted_on = handlers.adapt("omniglot-conv4", *slots(support))
    unchanged = handlers.mark_out_of_date(status, adapted, adapted_on, "omniglot-conv4", *slots(support))
    assert isinstance(unchanged, SKIPPED)
    renamed = {"ALPHA" if name == "alpha" else name: images for name, images in support.items()}
    assert handlers.mark_out_of_date(status, adapted, adapted_on, "omniglot-conv4", *slots(renamed)) == OUT_OF_DATE
    fewer = {**support, "beta": support["beta"][:1]}
    assert handlers.mark_out_of_date(status, adapted, adapted_on, "omniglot-conv4", *slots(fewer)) == OUT_OF_DATE
    assert isinstance(handlers.mark_out_of_date(OUT_OF_DATE, adapted, adapted_on, "omniglot-conv4", *slots(fewer)),
                      SKIPPED)  # said once
    refusal = '<span class="fs-error">⚠ Not added: 1 file</span>'
    assert handlers.mark_out_of_date(refusal, adapted, adapted_on, "omniglot-conv4",
                                     *slots(fewer)) == f"{refusal}\n\n{OUT_OF_DATE}"  # the refusal stays
    assert isinstance(handlers.mark_out_of_date("", None, None, "omniglot-conv4", *slots(fewer)), SKIPPED)
