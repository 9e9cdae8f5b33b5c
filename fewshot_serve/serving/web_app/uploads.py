"""What the page's inputs hand over (galleries, file lists, the sketchpad, webcam frames), as images for the API.

Files over :data:`MAX_UPLOAD_BYTES` are refused before anything decodes them; the same image uploaded
twice to a class is kept once (by content, whatever its name), since a duplicate would weigh that
image twice in the inner loop without the user noticing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per file


def _path_of(item: Any) -> str:
    """A gr.File item, a gr.Gallery ``(media, caption)`` pair, or a plain path, as a path."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return getattr(item, "name", None) or item.get("path")


def file_paths(files: Any) -> list[str]:
    """Paths of uploads (a gr.File list or a gr.Gallery value), refusing files over the size limit."""
    paths = []
    for item in files or []:
        path = _path_of(item)
        if os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise ValueError(f"{Path(path).name} is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        paths.append(path)
    return paths


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()  # at most MAX_UPLOAD_BYTES


def distinct_paths(files: Any) -> list[str]:
    """:func:`file_paths` with repeated contents dropped (the first copy kept, in order)."""
    seen: set[str] = set()
    kept = []
    for path in file_paths(files):
        digest = _digest(path)
        if digest not in seen:
            seen.add(digest)
            kept.append(path)
    return kept


def drawn_image(sketch: Any) -> Image.Image | None:
    """The sketchpad's drawing, or None when nothing was drawn."""
    if not isinstance(sketch, dict) or sketch.get("composite") is None:
        return None
    composite = sketch["composite"]
    image = composite if isinstance(composite, Image.Image) else Image.fromarray(np.asarray(composite))
    pixels = np.asarray(image.convert("RGBA"))
    drawn = pixels[..., 3] > 0 if image.mode in ("RGBA", "LA") else pixels[..., :3].min(-1) < 250
    return image if drawn.any() else None
