"""Serving the page: load the model files, check the launch is safe, and run Gradio with bounded resources.

Memory is bounded three ways: each session's values expire (``session_lifetime_s``), at most
``MAX_SESSIONS`` sessions are held (the oldest dropped first), and Gradio's upload cache is swept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from ..api import FewShotModel, load
from ..auth import AUTH_ENV, Credentials, is_loopback
from .examples import EXAMPLES_DIR
from .layout import PAGE_CSS, PAGE_JS, SESSION_LIFETIME_S, build_app
from .results_table import RESULTS_CSS
from .task_file import MAX_TASK_BYTES

# One request adapts and classifies in 0.1-0.3 s on a 2-core CPU, and throughput stays flat from 1 to
# 64 concurrent clients (benchmarks/serve_throughput.py): 2 at a time use both cores, and 16 waiting
# keep the longest wait to a few seconds before anyone is turned away.
CONCURRENCY = 2
QUEUE_SIZE = 16
#: Sessions whose page state is held at once (Gradio's default, 10,000, is no bound in practice: each one
#: holds a copy of the page's configuration and its adapted classifier); past this the oldest is dropped.
MAX_SESSIONS = 64


def load_models(paths: Sequence[str | os.PathLike], bf16: bool = False) -> dict[str, FewShotModel]:
    """Each model file, loaded, under its file name without the suffix (which must differ).

    ``bf16``: bfloat16 classification where the hardware has it (see :func:`fewshot_serve.load`).
    """
    models: dict[str, FewShotModel] = {}
    for path in paths:
        name = Path(path).stem
        if name in models:
            raise ValueError(f"two model files are named {name!r}; rename one")
        models[name] = load(path, bf16=bf16)
    return models


def launch(model_paths: str | os.PathLike | Sequence[str | os.PathLike], host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, block: bool = True, credentials: Credentials | None = None,
           allow_anonymous: bool = False, concurrency: int = CONCURRENCY, queue_size: int = QUEUE_SIZE,
           bf16: bool = False, max_sessions: int = MAX_SESSIONS,
           session_lifetime_s: float = SESSION_LIFETIME_S) -> gr.Blocks:
    """Load the model file(s) and serve the app; ``block=False`` returns once it is listening (tests).

    With ``credentials`` every page and API call needs a login. Serving anything but loopback (or a
    share link) without them is refused unless ``allow_anonymous``. At most ``concurrency`` requests
    per event run at once and ``queue_size`` wait; past that a request is refused at once with
    "Queue is full! Please try again." rather than waiting without bound. ``bf16``: see
    :func:`load_models`. At most ``max_sessions`` sessions' page state is held, each value for
    ``session_lifetime_s`` after it was set.
    """
    if credentials is None and not allow_anonymous and (share or not is_loopback(host)):
        raise ValueError(
            f"refusing to serve {'a share link' if share else host} without a login: give --auth-file FILE "
            f"(lines user:password) or ${AUTH_ENV}=user:password, or --no-auth to serve anyone who can reach it"
        )
    if concurrency < 1 or queue_size < 1 or max_sessions < 1:
        raise ValueError("concurrency, queue size and sessions must be at least 1")
    if isinstance(model_paths, (str, os.PathLike)):
        model_paths = [model_paths]
    models = load_models(model_paths, bf16)
    app = build_app(models, session_lifetime_s=session_lifetime_s)
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
               max_file_size=MAX_TASK_BYTES, show_error=False, quiet=True, auth=credentials,
               auth_message="fewshot-serve: log in" if credentials else None, allowed_paths=[str(EXAMPLES_DIR)],
               css=PAGE_CSS + RESULTS_CSS, js=PAGE_JS, state_session_capacity=max_sessions)
    if block:
        public = f" and {app.share_url}" if app.share_url else " (python app.py --share adds a public link)"
        print(f"fewshot-serve: serving {', '.join(models)} at {app.local_url}{public}", flush=True)
        app.block_thread()
    return app
