"""Bounded memory: 50 sessions adapt on the page, as a browser would, over Gradio's HTTP queue.

Each session uploads its own support images and presses Adapt (the page's own event, with its own
session hash), so each one leaves an adapted classifier in its page state. The server must hold at
most ``max_sessions`` sessions at any time, drop every adapted classifier once the session lifetime
has passed, and its resident memory must stop growing once it holds as many sessions as it may.
"""

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import draw_glyph, free_port

from fewshot_serve.serving.web_app import UI_CLASSES, launch

pytestmark = pytest.mark.slow  # a server and 50 sessions: not in the quick tier

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "omniglot-conv4.safetensors"
SESSIONS, MAX_SESSIONS, LIFETIME_S = 50, 8, 3.0
#: Resident memory may grow by this much from the moment the server holds its full count of sessions to
#: the end of the 50: measured growth was a few MB (allocator noise); a leak of one adapted classifier
#: and page copy per session would add about 1-3 MB each, so 42 more sessions would pass this only if small.
STEADY_GROWTH_MB = 60


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def adapt_fn_index(app) -> int:
    """The page's Adapt event (private to the page, so found by its handler's name, not an API name)."""
    [index] = [i for i, fn in app.fns.items() if getattr(fn.fn, "__name__", "") == "adapt"]
    return index


def uploaded(http: httpx.Client, paths: list[Path]) -> list[str]:
    files = [("files", (path.name, path.read_bytes(), "image/png")) for path in paths]
    response = http.post("/gradio_api/upload", files=files)
    response.raise_for_status()
    return response.json()


def gallery(server_paths: list[str]) -> list[dict]:
    return [{"image": {"path": path, "meta": {"_type": "gradio.FileData"}}, "caption": None} for path in server_paths]


def press_adapt(http: httpx.Client, fn_index: int, session: str, model: str, galleries: list[list[dict]]) -> dict:
    """Join the queue as the page does and read the event stream to its end; the completion message."""
    names = ["a", "b"] + [""] * (UI_CLASSES - 2)
    galleries = galleries + [[] for _ in range(UI_CLASSES - len(galleries))]
    data = [model, *names, *galleries, *[""] * UI_CLASSES]  # the slots' names, galleries and (unused) text boxes
    joined = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                       "session_hash": session, "event_data": None})
    joined.raise_for_status()
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError(f"session {session}: the event stream ended without a result")


def adapted_classifiers(app) -> int:
    """How many sessions hold an adapted classifier now."""
    from fewshot_serve.serving.api import AdaptedClassifier
    return sum(isinstance(value, AdaptedClassifier)
               for session in list(app.state_holder.session_data.values())
               for value in list(session.state_data.values()))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read resident memory")
def test_fifty_sessions_stay_within_the_session_bound_and_expire(tmp_path):
    support = []
    for glyph in (0, 1):
        path = tmp_path / f"glyph{glyph}.png"
        draw_glyph(400 + glyph, 0).save(path)
        support.append(path)
    port = free_port()
    app = launch(SHIPPED, port=port, block=False, max_sessions=MAX_SESSIONS, session_lifetime_s=LIFETIME_S)
    try:
        fn_index, memory = adapt_fn_index(app), {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for number in range(1, SESSIONS + 1):
                server_paths = uploaded(http, support)
                message = press_adapt(http, fn_index, uuid.uuid4().hex, SHIPPED.stem,
                                      [gallery(server_paths[:1]), gallery(server_paths[1:])])
                assert message["success"], message
                assert "Adapted to 2 classes" in message["output"]["data"][0], message["output"]["data"][0]
                assert len(app.state_holder.session_data) <= MAX_SESSIONS
                memory[number] = rss_mb()
        held = adapted_classifiers(app)
        assert 0 < held <= MAX_SESSIONS
        deadline = time.time() + LIFETIME_S + 10  # Gradio sweeps expired values every second
        while adapted_classifiers(app) and time.time() < deadline:
            time.sleep(0.5)
        assert adapted_classifiers(app) == 0, "adapted classifiers outlived the session lifetime"
    finally:
        app.close()
    growth = memory[SESSIONS] - memory[MAX_SESSIONS]
    print(f"\nresident memory: {memory[1]:.0f} MB after 1 session, {memory[MAX_SESSIONS]:.0f} MB after "
          f"{MAX_SESSIONS}, {memory[SESSIONS]:.0f} MB after {SESSIONS} (+{growth:.0f} MB); {held} classifiers "
          f"held at the end, 0 after {LIFETIME_S:.0f} s")
    assert growth < STEADY_GROWTH_MB, f"memory grew {growth:.0f} MB after the server held its {MAX_SESSIONS} sessions"
