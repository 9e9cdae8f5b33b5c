"""Crash-safe file writes: a file is either its old self or its complete new self, never half."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    Writers that want a path (safetensors, matplotlib, onnx) write to the yielded one. If the
    body raises, the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.chmod(temporary, 0o644)  # some writers create 0600 files; results are meant to be shared
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(text)


def atomic_write_json(path: str | os.PathLike, data: object) -> None:
    """``data`` as indented JSON (what benchmarks and evaluation scripts leave as results)."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
