"""The Gradio app, launched in-process on a free port and driven with gradio_client."""

import json
import socket
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from conftest import draw_glyph
from fewshot_serve.web_app import drawn_image, launch

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "omniglot-conv4.safetensors"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    app = launch(SHIPPED, port=port, block=False)
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


def test_only_the_classify_endpoint_is_public(server):
    assert list(server.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/classify"]


def test_blank_sketchpad_counts_as_no_drawing():
    from PIL import Image

    blank = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    assert drawn_image({"composite": blank}) is None
    assert drawn_image(None) is None
    inked = blank.copy()
    inked.putpixel((10, 10), (0, 0, 0, 255))
    assert drawn_image({"composite": inked}) is inked
