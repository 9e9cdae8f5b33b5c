"""Per-session folders for what the page writes (ONNX exports, task files, a loaded task's images).

A 31 MB export per click used to stay in the temporary directory for good. Here each browser
session writes into its own folder, replaced file by file, and the folder is removed when the
session's page closes (``Blocks.unload``) or, for whatever is left, when the app stops. The root
lies inside Gradio's upload folder, from where Gradio serves a file as it is; from anywhere else
it would first copy it into that folder, and the copy would outlive the session.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
import threading
from pathlib import Path

from gradio.utils import get_upload_folder

SAFE_SESSION = re.compile(r"[^A-Za-z0-9_-]")


def _folder_name(session: str | None) -> str:
    """A session hash as a folder name: it comes from the browser, so nothing in it may leave the root."""
    return SAFE_SESSION.sub("_", session or "")[:64] or "anonymous"


class SessionFolders:
    """One temporary folder per session under a root of its own, all removed by :meth:`remove_all`."""

    def __init__(self) -> None:
        served = Path(get_upload_folder())
        served.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="fewshot-serve-", dir=served))
        self._lock = threading.Lock()
        atexit.register(self.remove_all)

    def folder(self, session: str | None, *parts: str) -> Path:
        """The session's folder (or a subfolder), made on first use."""
        path = self.root.joinpath(_folder_name(session), *parts)
        with self._lock:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def remove(self, session: str | None) -> None:
        """Drop a session's files (its page was closed)."""
        with self._lock:
            shutil.rmtree(self.root / _folder_name(session), ignore_errors=True)

    def remove_all(self) -> None:
        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)

    def sessions(self) -> list[str]:
        """The sessions holding files now (for tests and logs)."""
        return sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
