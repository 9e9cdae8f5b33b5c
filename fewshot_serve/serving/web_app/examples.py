"""The example tasks the page fills in with one click: handwriting (Omniglot) and photos (generated here).

Each lives in ``examples/<name>/``: ``support/<class>/`` images and ``queries/``, with its licence
beside them. An example is offered only where its folder ships and a model of its kind is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .model_menu import HANDWRITING, PHOTOS

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


EXAMPLES = {
    HANDWRITING: Example(EXAMPLES_DIR / "omniglot", "3 handwritten Korean characters (Omniglot), 2 drawings each."),
    PHOTOS: Example(EXAMPLES_DIR / "patterns", "3 kinds of patterned cloth (pictures generated for this example), "
                                               "3 each."),
}
