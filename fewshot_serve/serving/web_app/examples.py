"""The example tasks the page fills in with one click: handwriting (Omniglot), photos (generated here) and
texts (written here).

Each lives in ``examples/<name>/``: ``support/<class>/`` images and ``queries/`` (a text example:
``support/<class>.txt`` and ``queries.txt``, one text a line), with its licence beside them. An
example is offered only where its folder ships and a model of its kind is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .model_menu import HANDWRITING, PHOTOS, TEXT

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "examples"
IMAGE_GLOBS = ("*.png", "*.jpg")


def _images(folder: Path) -> list[str]:
    return sorted(str(path) for pattern in IMAGE_GLOBS for path in folder.glob(pattern))


@dataclass(frozen=True)
class Example:
    folder: Path
    description: str

    def available(self) -> bool:
        return (self.folder / "support").is_dir()

    def support(self) -> dict[str, list[str]]:
        classes = sorted(p for p in (self.folder / "support").iterdir() if p.is_dir())
        return {c.name: _images(c) for c in classes}

    def queries(self) -> list[str]:
        return _images(self.folder / "queries")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class TextExample(Example):
    """An example of texts: one file of lines per class, and one of queries."""

    def support(self) -> dict[str, list[str]]:
        return {path.stem: _lines(path) for path in sorted((self.folder / "support").glob("*.txt"))}

    def queries(self) -> list[str]:
        return _lines(self.folder / "queries.txt")


EXAMPLES = {
    HANDWRITING: Example(EXAMPLES_DIR / "omniglot", "3 handwritten Korean characters (Omniglot), 2 drawings each."),
    PHOTOS: Example(EXAMPLES_DIR / "patterns", "3 kinds of patterned cloth (pictures generated for this example), "
                                               "3 each."),
    TEXT: TextExample(EXAMPLES_DIR / "support-messages", "3 kinds of customer-support message (written for this "
                                                         "example), 3 each."),
}
