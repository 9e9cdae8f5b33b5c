"""The Gradio app: name classes, upload, draw or photograph a few images of each, Adapt, then classify queries.

An image's way through the page: layout.py (the components) → handlers.py (what each button does)
→ uploads.py (files to paths, duplicates dropped) → the API (serving/api.py) → results_table.py.
"""

from .handlers import UI_CLASSES, PageHandlers
from .layout import build_app
from .model_menu import describe, menu_choices
from .results_table import QueryResult, results_html
from .server import CONCURRENCY, MAX_SESSIONS, QUEUE_SIZE, launch, load_models
from .uploads import drawn_image

__all__ = ["CONCURRENCY", "MAX_SESSIONS", "QUEUE_SIZE", "UI_CLASSES", "PageHandlers", "QueryResult", "build_app",
           "describe", "drawn_image", "launch", "load_models", "menu_choices", "results_html"]
