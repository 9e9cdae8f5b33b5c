"""What the page's inputs hand over (galleries, file lists, the sketchpad, webcam frames), as images for the API.

Files over :data:`MAX_UPLOAD_BYTES` are refused before anything decodes them; an upload to a class is
decoded at once and refused there (size, pixels, format), so a file Adapt would refuse never enters a
class; the same image uploaded twice to a class is kept once (by content, whatever its name), since a
duplicate would weigh that image twice in the inner loop without the user noticing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...preprocessing import ImageError, open_image

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # per file


def path_of(item: Any) -> str:
    """A gr.File item, a gr.Gallery ``(media, caption)`` pair, or a plain path, as a path."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return getattr(item, "name", None) or item.get("path")


def file_paths(files: Any) -> list[str]:
    """Paths of uploads (a gr.File list or a gr.Gallery value), refusing files over the size limit (naming each)."""
    paths = [path_of(item) for item in files or []]
    too_large = [Path(path).name for path in paths if os.path.getsize(path) > MAX_UPLOAD_BYTES]
    if too_large:
        raise ValueError(f"larger than {MAX_UPLOAD_BYTES // 2**20} MB: {', '.join(too_large)}")
    return paths


def upload_problem(path: str) -> str | None:
    """Why the image at ``path`` cannot be used (too large, too many pixels, not an image), or None."""
    if os.path.getsize(path) > MAX_UPLOAD_BYTES:
        return f"{Path(path).name} is larger than {MAX_UPLOAD_BYTES // 2**20} MB"
    try:
        open_image(path, "upload")
    except ImageError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class CheckedUploads:
    """A class's images after an upload: those kept (usable, each content once), the refused ones with
    why, and how many repeated an image already kept."""

    kept: list[str]
    refused: list[str]
    repeated: int


def checked_uploads(files: Any) -> CheckedUploads:
    """The usable images of ``files``, in order, each content once (the first copy kept)."""
    seen: set[str] = set()
    kept, refused, repeated = [], [], 0
    for path in map(path_of, files or []):
        problem = upload_problem(path)
        if problem:
            refused.append(problem)
            continue
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()  # at most MAX_UPLOAD_BYTES
        if digest in seen:
            repeated += 1
            continue
        seen.add(digest)
        kept.append(path)
    return CheckedUploads(kept, refused, repeated)


def drawn_image(sketch: Any) -> Image.Image | None:
    """The sketchpad's drawing, or None when nothing was drawn."""
    if not isinstance(sketch, dict) or sketch.get("composite") is None:
        return None
    composite = sketch["composite"]
    image = composite if isinstance(composite, Image.Image) else Image.fromarray(np.asarray(composite))
    pixels = np.asarray(image.convert("RGBA"))
    drawn = pixels[..., 3] > 0 if image.mode in ("RGBA", "LA") else pixels[..., :3].min(-1) < 250
    return image if drawn.any() else None
