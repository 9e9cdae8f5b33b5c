"""Bad input as a readable message, never a traceback: in the page's status area, or as the API's error.

The page's messages go to its status area (the first output of every page handler), where they stay
until the next action, and as a toast: the status area sits under Adapt, which on a phone (and below
a long class list on a desktop) is off screen when Classify, Export or an upload answers. A refusal is
a warning toast, anything else an information toast. The status is Markdown, so messages are escaped:
a class named ``<b>x</b>`` shows as typed. API clients get the plain text as a ``gr.Error``.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

log = logging.getLogger(__name__)
UNEXPECTED = "Something went wrong ({}); please try again."
#: How long a "done" toast shows: long enough to read, short enough not to cover the results for long.
INFO_SECONDS = 5


ERROR_START = '<span class="fs-error">'


def error_status(message: str) -> str:
    """A refusal (plain text, escaped here) as the status shows it; its toast is a warning."""
    return f"{ERROR_START}⚠ {html.escape(message)}</span>"


def toast(status: str, warning: bool = False) -> None:
    """A status (already escaped, Markdown's bold marks dropped) as a toast where the user is looking.
    Outside a Gradio event (a handler called directly) Gradio prints it, or warns for a warning."""
    text = status.replace("**", "").replace("`", "").replace("\n\n", " ")
    if warning:
        gr.Warning(text)  # Gradio's 10 s: a refusal is read
    else:
        gr.Info(text, duration=INFO_SECONDS)


def status_errors(outputs: int) -> Callable[[Callable], Callable]:
    """For a page handler with ``outputs`` outputs, status first: on bad input show it there, change nothing else."""

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                result = handler(*args, **kwargs)
            except ValueError as error:
                message = str(error)
            except Exception as error:  # keep serving; the details stay in the server log
                log.exception("page handler %s failed", handler.__name__)
                message = UNEXPECTED.format(type(error).__name__)
            else:
                status = result[0] if outputs > 1 else result
                if isinstance(status, str) and status:
                    toast(status, warning=status.startswith(ERROR_START))
                return result
            toast(html.escape(message), warning=True)
            unchanged = (gr.skip(),) * (outputs - 1)
            return (error_status(message), *unchanged) if outputs > 1 else error_status(message)

        return wrapper

    return decorate


def api_errors(handler: Callable) -> Callable:
    """For an API endpoint: bad input as a plain-text ``gr.Error``."""

    @functools.wraps(handler)
    def wrapper(*args: Any) -> Any:
        try:
            return handler(*args)
        except gr.Error:
            raise
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            raise gr.Error(UNEXPECTED.format(type(error).__name__)) from error

    return wrapper
