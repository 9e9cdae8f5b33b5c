"""The Gradio app, launched in-process on a free port and driven with gradio_client."""

import json
from pathlib import Path

import pytest
from conftest import draw_glyph, free_port
from gradio_client import Client, handle_file

from fewshot_serve.serving.web_app import drawn_image, launch

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "omniglot-conv4.safetensors"


@pytest.fixture(scope="module")
def server(colour_model):
    port = free_port()
    app = launch([SHIPPED, colour_model], port=port, block=False)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    app.close()


@pytest.fixture(scope="module")
def glyph_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app-glyphs")
    paths = {}
    for c in range(3):
        for i in range(3):
            path = folder / f"c{c}_{i}.png"
            draw_glyph(40 + c, 100 * c + i).save(path)
            paths[c, i] = str(path)
    return paths


def test_classify_endpoint_round_trip(server, glyph_files):
    support = [handle_file(glyph_files[c, i]) for c in range(3) for i in range(2)]
    labels = json.dumps([name for name in ("alpha", "beta", "gamma") for _ in range(2)])
    queries = [handle_file(glyph_files[c, 2]) for c in range(3)]
    result = server.predict(support, labels, queries, api_name="/classify")
    assert result["labels"] == ["alpha", "beta", "gamma"]
    predicted = [max(row, key=row.get) for row in result["predictions"]]
    assert predicted == ["alpha", "beta", "gamma"]
    assert all(abs(sum(row.values()) - 1) < 1e-4 for row in result["predictions"])
    for verdict, label in zip(result["verdicts"], predicted, strict=True):  # "none of these": no label, a score
        assert verdict["label"] == (None if verdict["unknown"] else label) and verdict["unknown_score"] >= 0
    assessment = result["assessment"]  # two folds, each holding out one image of every class: six predictions
    assert assessment["held_out"] == 6 and sum(map(sum, assessment["confusion"])) == 6
    assert assessment["summary"].startswith("Likely ") and len(assessment["interval"]) == 2


def test_classify_endpoint_serves_the_model_asked_for(server, glyph_files):
    support = [handle_file(glyph_files[c, i]) for c in range(2) for i in range(2)]
    labels = json.dumps(["a", "a", "b", "b"])
    query = [handle_file(glyph_files[0, 2])]
    assert server.predict(support, labels, query, api_name="/classify")["model"] == "omniglot-conv4"
    colour = server.predict(support, labels, query, "colour-conv4", api_name="/classify")
    assert colour["model"] == "colour-conv4" and colour["labels"] == ["a", "b"]
    with pytest.raises(Exception, match="no model named .*nope.*; served: omniglot-conv4, colour-conv4"):
        server.predict(support, labels, query, "nope", api_name="/classify")


def test_models_with_the_same_name_are_refused(colour_model, tmp_path):
    from fewshot_serve.serving.web_app import load_models

    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / colour_model.name
    twin.write_bytes(colour_model.read_bytes())
    with pytest.raises(ValueError, match="two model files are named 'colour-conv4'"):
        load_models([colour_model, twin])


def test_classify_endpoint_reports_bad_input_and_keeps_serving(server, glyph_files, tmp_path):
    not_an_image = tmp_path / "fake.png"
    not_an_image.write_text("hello")
    with pytest.raises(Exception, match="not a readable image"):
        server.predict([handle_file(glyph_files[0, 0]), handle_file(str(not_an_image))], '["a", "b"]',
                       [handle_file(glyph_files[0, 2])], api_name="/classify")
    with pytest.raises(Exception, match="at least 2 classes"):
        server.predict([handle_file(glyph_files[0, 0])], '["a"]', [handle_file(glyph_files[0, 2])],
                       api_name="/classify")
    result = server.predict([handle_file(glyph_files[0, 0]), handle_file(glyph_files[1, 0])], '["a", "b"]',
                            [handle_file(glyph_files[0, 2])], api_name="/classify")
    assert result["labels"] == ["a", "b"]


def test_only_the_classify_endpoints_are_public(server):
    assert list(server.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/classify",
                                                                                             "/classify_texts"]


def test_blank_sketchpad_counts_as_no_drawing():
    from PIL import Image

    blank = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    assert drawn_image({"composite": blank}) is None
    assert drawn_image(None) is None
    inked = blank.copy()
    inked.putpixel((10, 10), (0, 0, 0, 255))
    assert drawn_image({"composite": inked}) is inked


def image_file(folder, name, image, **save_options):
    path = folder / name
    image.save(path, **save_options)
    return handle_file(str(path))


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """Each odd upload of issue 5, keyed by what it is."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("odd")
    glyph = draw_glyph(40, 7)
    files = {
        "animated gif": image_file(folder, "anim.gif", glyph, save_all=True,
                                   append_images=[draw_glyph(41, 1), draw_glyph(42, 1)], duration=100),
        "16-bit png": image_file(folder, "deep.png", Image.fromarray(
            (__import__("numpy").asarray(glyph, dtype="uint16") * 257).astype("uint16"))),
        "cmyk jpeg": image_file(folder, "cmyk.jpg", glyph.convert("CMYK")),
        "alpha png": image_file(folder, "alpha.png", glyph.convert("RGBA")),
        "1x1 png": image_file(folder, "tiny.png", Image.new("L", (1, 1), 0)),
        "all black": image_file(folder, "black.png", Image.new("L", (28, 28), 0)),
        "all white": image_file(folder, "white.png", Image.new("L", (28, 28), 255)),
    }
    (folder / "empty.png").write_bytes(b"")
    files["0-byte file"] = handle_file(str(folder / "empty.png"))
    whole = folder / "whole.png"
    glyph.save(whole)
    (folder / "truncated.png").write_bytes(whole.read_bytes()[:-40])
    files["truncated png"] = handle_file(str(folder / "truncated.png"))
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    files["decompression bomb"] = handle_file(str(folder / "bomb.png"))
    return files


@pytest.mark.parametrize("kind, message", [
    ("0-byte file", "empty"), ("truncated png", "not a readable image"),
    ("decompression bomb", "decompression bomb|pixels is more than"),
])
def test_broken_uploads_get_a_clear_message(server, glyph_files, odd_files, kind, message):
    with pytest.raises(Exception, match=message):
        server.predict([handle_file(glyph_files[0, 0]), odd_files[kind]], '["a", "b"]',
                       [handle_file(glyph_files[0, 2])], api_name="/classify")


@pytest.mark.parametrize("kind", ["animated gif", "16-bit png", "cmyk jpeg", "alpha png", "1x1 png",
                                  "all black", "all white"])
def test_unusual_but_valid_uploads_are_classified(server, glyph_files, odd_files, kind):
    result = server.predict([handle_file(glyph_files[0, 0]), odd_files[kind]], '["a", "b"]',
                            [odd_files[kind], handle_file(glyph_files[0, 2])], api_name="/classify")
    assert all(abs(sum(row.values()) - 1) < 1e-4 for row in result["predictions"])


@pytest.mark.parametrize("labels, message", [
    (["x", "x"], "at least 2 classes"),  # the same label twice is one class
    (["ok", "   "], "non-empty"),
    (["ok"], "2 support files but 1 labels"),
    (["ok", None], "label #2 must be a non-empty string .* got null"),  # not a class named "None"
    ([["a"], "ok"], r"label #1 must be a non-empty string .* got \["),  # not a class named "['a']"
    (["ok", 3], "label #2 must be a non-empty string"),
])
def test_bad_labels_get_a_clear_message(server, glyph_files, labels, message):
    with pytest.raises(Exception, match=message):
        server.predict([handle_file(glyph_files[0, 0]), handle_file(glyph_files[1, 0])], json.dumps(labels),
                       [handle_file(glyph_files[0, 2])], api_name="/classify")


def test_a_bad_query_gets_an_error_in_its_own_entry_and_the_rest_are_classified(server, glyph_files, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    result = server.predict([handle_file(glyph_files[0, 0]), handle_file(glyph_files[1, 0])], '["a", "b"]',
                            [handle_file(glyph_files[0, 2]), handle_file(str(fake)), handle_file(glyph_files[1, 2])],
                            api_name="/classify")
    assert result["predictions"][1] is None and "fake.png" in result["verdicts"][1]["error"]
    assert "not a readable image" in result["verdicts"][1]["error"]
    for index in (0, 2):
        assert abs(sum(result["predictions"][index].values()) - 1) < 1e-4
        assert set(result["verdicts"][index]) == {"label", "unknown_score", "unknown", "unsure"}


def test_html_in_class_names_stays_text(server, glyph_files, tmp_path):
    name = "<script>alert(1)</script>"
    result = server.predict([handle_file(glyph_files[0, 0]), handle_file(glyph_files[1, 0])],
                            json.dumps([name, "<b>bold</b>"]), [handle_file(glyph_files[0, 2])], api_name="/classify")
    assert result["labels"] == [name, "<b>bold</b>"]
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(Exception) as raised:  # echoed in an API error: plain text, as the client sent it
        server.predict([handle_file(glyph_files[0, 0]), handle_file(str(fake))],
                       json.dumps(["ok", name]), [handle_file(glyph_files[0, 2])], api_name="/classify")
    message = str(raised.value)
    assert f"class {name!r} image #1 (fake.png): not a readable image" in message
    assert "&lt;" not in message and "&#x27;" not in message and " at 0x" not in message


def test_page_handlers_show_escaped_messages_in_the_status_and_api_ones_raise_plain_text():
    import gradio as gr

    from fewshot_serve.serving.web_app.errors import api_errors, status_errors

    def refuse():
        raise ValueError("class '<b>x</b>' is bad")

    status, *rest = status_errors(outputs=3)(refuse)()
    assert "class &#x27;&lt;b&gt;x&lt;/b&gt;&#x27; is bad" in status and "<b>" not in status
    assert len(rest) == 2 and all(isinstance(value, type(gr.skip())) for value in rest)  # the rest left alone
    with pytest.raises(gr.Error) as api:
        api_errors(refuse)()
    assert api.value.message == "class '<b>x</b>' is bad"


@pytest.mark.slow  # over 4 s on 2 cores: the full run's, not the quick tier's
def test_request_limits_are_enforced_with_a_clear_message(server, glyph_files):
    one = handle_file(glyph_files[0, 0])
    with pytest.raises(Exception, match="at most 100 classes"):
        server.predict([one] * 200, json.dumps([f"c{i}" for i in range(200)]), [one], api_name="/classify")
    # just past each limit (tests/test_serving.py sends 500 images in a class and 1000 queries)
    with pytest.raises(Exception, match="at most 100 per class"):
        server.predict([one] * 101 + [handle_file(glyph_files[1, 0])], json.dumps(["a"] * 101 + ["b"]), [one],
                       api_name="/classify")
    with pytest.raises(Exception, match="at most 500 per request"):
        server.predict([one, handle_file(glyph_files[1, 0])], '["a", "b"]', [one] * 501, api_name="/classify")
    with pytest.raises(Exception, match="no query images"):
        server.predict([one, handle_file(glyph_files[1, 0])], '["a", "b"]', [], api_name="/classify")
    result = server.predict([one, handle_file(glyph_files[1, 0])], '["a", "b"]', [one], api_name="/classify")
    assert result["labels"] == ["a", "b"]  # and the server still answers


def raw_classify(url: str, support: list[str], query: list[str]) -> str:
    """Call /classify over plain HTTP naming server-side paths; returns the event stream's text."""
    import httpx

    file = lambda path: {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}  # noqa: E731
    call = f"{url}gradio_api/call/classify"
    labels = json.dumps([f"c{i}" for i in range(len(support))])
    event = httpx.post(call, json={"data": [[file(p) for p in support], labels, [file(p) for p in query], ""]}).json()
    return httpx.get(f"{call}/{event['event_id']}", timeout=60).text


def test_the_page_cannot_make_the_server_read_arbitrary_paths(server, glyph_files, tmp_path):
    """A request naming a server-side file it never uploaded is refused; uploaded files work."""
    import httpx

    url = server.src if server.src.endswith("/") else server.src + "/"
    with open(glyph_files[0, 0], "rb") as a, open(glyph_files[1, 0], "rb") as b:
        uploaded = httpx.post(f"{url}gradio_api/upload", files=[("files", a), ("files", b)]).json()
    assert "event: complete" in raw_classify(url, uploaded, uploaded[:1])  # the control: uploads are usable
    secret = tmp_path / "never-uploaded.png"  # a readable image on the server's disk
    draw_glyph(9, 9).save(secret)
    answer = raw_classify(url, [uploaded[0], str(secret)], uploaded[:1])
    assert "event: error" in answer and "c1" not in answer
    answer = raw_classify(url, [uploaded[0], str(SHIPPED)], uploaded[:1])
    assert "event: error" in answer


def test_the_example_tasks_ship_with_the_app():
    from fewshot_serve.serving.web_app.examples import EXAMPLES

    for example in EXAMPLES.values():
        support = example.support()
        assert len(support) == 3 and all(len(images) >= 2 for images in support.values()), example.folder
        assert len(example.queries()) == 3


def test_every_page_answer_is_also_a_toast_where_the_user_is_looking(monkeypatch):
    import gradio as gr

    from fewshot_serve.serving.web_app.errors import status_errors

    toasts = []
    monkeypatch.setattr(gr, "Info", lambda text, duration: toasts.append(("info", text)))
    monkeypatch.setattr(gr, "Warning", lambda text: toasts.append(("warning", text)))

    def refuse():
        raise ValueError("class '<b>x</b>' is bad")

    status_errors(outputs=2)(refuse)()
    status_errors(outputs=2)(lambda: ("Classified **3** of 3 queries.\n\nLikely 79–100% right.", None))()
    status_errors(outputs=2)(lambda: ("", None))()  # nothing to say: no toast
    assert toasts == [("warning", "class &#x27;&lt;b&gt;x&lt;/b&gt;&#x27; is bad"),
                      ("info", "Classified 3 of 3 queries. Likely 79–100% right.")]
