"""A task as one file: the support images (or texts), their class names and the model, in a zip to download and
load back. A text task's texts live in its ``task.json`` (a class holds ``texts`` instead of ``images``).

Loading treats the zip as untrusted: only ``task.json`` and the images it names are read, each read
stops at the per-image size limit whatever the zip's header claims (a zip bomb cannot fill the disk),
and images are written under names made here, never under the paths inside the zip.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ...files.atomic import atomic_output
from .uploads import MAX_UPLOAD_BYTES

TASK_FORMAT = "fewshot-serve task"
TASK_VERSION = 1
MANIFEST = "task.json"
MAX_TASK_BYTES = 100 * 2**20  # a whole task file
MAX_TASK_CLASSES = 10  # the page's class slots
MAX_TASK_IMAGES = 100  # per class, as the API allows (texts too)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def write_task(path: str | Path, model: str, support: Mapping[str, Sequence[str]], text: bool = False) -> Path:
    """Write ``{class name: [image paths]}`` (with ``text``: ``{class name: [texts]}``) and the model's name
    to ``path`` (a zip, written atomically)."""
    classes = []
    with atomic_output(path) as temporary, zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
        for c, (name, images) in enumerate(support.items()):
            if text:
                classes.append({"name": name, "texts": list(images)})
                continue
            members = []
            for i, image in enumerate(images):
                member = f"images/{c:02d}/{i:03d}{Path(image).suffix.lower() or '.png'}"
                archive.write(image, member)
                members.append(member)
            classes.append({"name": name, "images": members})
        manifest = {"format": TASK_FORMAT, "version": TASK_VERSION, "model": model, "classes": classes}
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
    return Path(path)


def _read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """One member's bytes, refused past :data:`MAX_UPLOAD_BYTES` as it is read (not as the header says)."""
    try:
        with archive.open(member) as stream:
            data = stream.read(MAX_UPLOAD_BYTES + 1)
    except KeyError:
        raise ValueError(f"the task file names {member!r} but does not hold it") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{member} in the task file is larger than {MAX_UPLOAD_BYTES // 2**20} MB")
    return data


def _manifest(archive: zipfile.ZipFile) -> dict:
    try:
        manifest = json.loads(_read_member(archive, MANIFEST))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"not a fewshot-serve task file ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != TASK_FORMAT:
        raise ValueError("not a fewshot-serve task file (its task.json is not one)")
    if manifest.get("version") != TASK_VERSION:
        raise ValueError(f"task file version {manifest.get('version')!r}; this version reads {TASK_VERSION}")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_TASK_CLASSES:
        raise ValueError(f"a task file holds 1 to {MAX_TASK_CLASSES} classes")
    for entry in classes:
        entry = entry if isinstance(entry, dict) else {}
        images = entry.get("texts" if "texts" in entry else "images")
        if not isinstance(entry.get("name"), str) or not isinstance(images, list) or len(images) > MAX_TASK_IMAGES:
            raise ValueError(f"each class in a task file needs a name and at most {MAX_TASK_IMAGES} images or texts")
    if len({"texts" in entry for entry in classes}) > 1:
        raise ValueError("a task file holds images or texts, not both")
    return manifest


def read_task(path: str | Path, into: Path) -> tuple[str, dict[str, list[str]], bool]:
    """The model name, ``{class name: [image paths]}`` (its images written under ``into``) or, for a text
    task, ``{class name: [texts]}``, and whether it is a text task."""
    if Path(path).stat().st_size > MAX_TASK_BYTES:
        raise ValueError(f"the task file is larger than {MAX_TASK_BYTES // 2**20} MB")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError("not a fewshot-serve task file (not a zip file)") from None
    with archive:
        manifest = _manifest(archive)
        model = str(manifest.get("model") or "")
        if "texts" in manifest["classes"][0]:  # checked by the texts' own rules when adapted
            return model, {entry["name"]: [str(text) for text in entry["texts"]] for entry in manifest["classes"]}, True
        into.mkdir(parents=True, exist_ok=True)
        support: dict[str, list[str]] = {}
        for c, entry in enumerate(manifest["classes"]):
            images = support.setdefault(entry["name"], [])
            for i, member in enumerate(map(str, entry["images"])):
                suffix = Path(member).suffix.lower()
                target = into / f"{c:02d}-{i:03d}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"
                target.write_bytes(_read_member(archive, member))
                images.append(str(target))
    return model, support, False
