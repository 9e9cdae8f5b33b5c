"""README's Python snippets run as written, against the shipped models and the example files, so they cannot rot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SERVED_AT = "http://127.0.0.1:7860/"


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


@pytest.fixture
def in_a_copy_of_the_repository(tmp_path, monkeypatch):
    """A working folder with the repository's models and examples (a snippet's files are written there)."""
    for folder in ("models", "examples"):
        os.symlink(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_has_the_snippets_this_file_runs():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) == 2 and "fewshot_serve.load(" in blocks[0] and SERVED_AT in blocks[1]


@pytest.mark.slow
def test_the_python_api_snippet_runs(in_a_copy_of_the_repository):
    pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")
    namespace: dict = {}
    exec(python_blocks(ROOT / "README.md")[0], namespace)
    assert namespace["adapted"].labels == ["checks", "stripes"]
    rows = namespace["adapted"].classify([namespace["q1"], namespace["q2"]])
    assert [max(row, key=row.get) for row in rows] == ["checks", "stripes"]
    assert (in_a_copy_of_the_repository / "task.onnx").is_file()


@pytest.mark.slow
def test_the_endpoint_snippet_runs_against_a_served_page(in_a_copy_of_the_repository):
    pytest.importorskip("tokenizers", reason="the tokenizers library is not installed")
    from fewshot_serve.serving.web_app import launch

    port = free_port()
    models = [ROOT / "models" / f"{name}.safetensors" for name in ("photos-efficientnet-lite0", "text-minilm")]
    app = launch(models, port=port, block=False)
    try:
        namespace: dict = {}
        exec(python_blocks(ROOT / "README.md")[1].replace(SERVED_AT, f"http://127.0.0.1:{port}/"), namespace)
        result = namespace["result"]
        assert result["labels"] == ["checks", "stripes"] and result["verdicts"][0]["label"] == "checks"
    finally:
        app.close()
