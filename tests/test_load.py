"""Under load: 32 gradio_client clients with distinct tasks against one app process get their own answers;
128 clients against a small queue get either a right answer or a prompt refusal."""

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import draw_glyph, free_port
from gradio_client import Client, handle_file

import fewshot_serve

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "omniglot-conv4.safetensors"
CLIENTS, FIRST_ROUND, TOTAL = 32, 10, 1000


def glyph_task(folder: Path, client: int) -> list[str]:
    """Client ``client``'s files: support image of class a, of class b, and a query of class a."""
    files = []
    for role, (cls, seed) in enumerate([(0, 0), (1, 0), (0, 1)]):
        path = folder / f"client{client}_{role}.png"
        draw_glyph(300 + 2 * client + cls, 10 * client + seed).save(path)
        files.append(str(path))
    return files


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_app(*options: str):
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the app did not start listening within 120 s")
    return process, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def app_process():
    process, url = start_app("--model", str(SHIPPED), "--queue-size", str(2 * CLIENTS))  # room for every client
    yield process, url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's memory")
def test_32_clients_get_their_own_answers_and_memory_stays_bounded(app_process, tmp_path):
    process, url = app_process
    tasks = [glyph_task(tmp_path, client) for client in range(CLIENTS)]
    model = fewshot_serve.load(SHIPPED, device="cpu")
    alone = [model.adapt({f"a{c}": [t[0]], f"b{c}": [t[1]]}).classify([t[2]])[0] for c, t in enumerate(tasks)]

    def request(client, index):
        support_a, support_b, query = tasks[index]
        return client.predict([handle_file(support_a), handle_file(support_b)], json.dumps([f"a{index}", f"b{index}"]),
                              [handle_file(query)], api_name="/classify")

    def run_client(index, requests):
        client = Client(url, verbose=False)
        return [request(client, index) for _ in range(requests)]

    with ThreadPoolExecutor(CLIENTS) as pool:
        rounds = list(pool.map(lambda i: run_client(i, FIRST_ROUND), range(CLIENTS)))
    for index, answers in enumerate(rounds):
        for answer in answers:
            assert answer["labels"] == [f"a{index}", f"b{index}"]
            for label, probability in alone[index].items():
                assert answer["predictions"][0][label] == pytest.approx(probability, abs=1e-4)
    warm = rss_mb(process.pid)
    remaining = TOTAL - CLIENTS * FIRST_ROUND
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda i: run_client(i, remaining // CLIENTS + (i < remaining % CLIENTS)), range(CLIENTS)))
    after = rss_mb(process.pid)
    print(f"server RSS after {CLIENTS * FIRST_ROUND} requests: {warm:.0f} MB; after {TOTAL}: {after:.0f} MB")
    assert process.poll() is None
    assert after - warm < 150, f"server memory grew from {warm:.0f} MB to {after:.0f} MB"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's memory")
def test_128_clients_against_a_small_queue_are_answered_right_or_refused_promptly(tmp_path):
    """Queue of 4, one request at a time, 128 simultaneous requests over the REST API (``/call/classify``,
    as curl would): each is either answered correctly or refused at once with HTTP 503 "Queue is full";
    the server stays up, serves the next request and keeps its memory."""
    import threading

    import httpx

    process, url = start_app("--model", str(SHIPPED), "--concurrency", "1", "--queue-size", "4")
    try:
        clients = 128
        tasks = [glyph_task(tmp_path, client) for client in range(clients)]
        model = fewshot_serve.load(SHIPPED, device="cpu")
        alone = [model.adapt({f"a{c}": [t[0]], f"b{c}": [t[1]]}).classify([t[2]])[0] for c, t in enumerate(tasks)]
        http = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=clients))
        uploaded = []
        for files in tasks:  # uploads are not queued events: done before the burst
            handles = [open(path, "rb") for path in files]
            uploaded.append(http.post(f"{url}gradio_api/upload", files=[("files", h) for h in handles]).json())
            for handle in handles:
                handle.close()
        before = rss_mb(process.pid)
        start = threading.Barrier(clients)

        def request(index):
            file = lambda path: {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}  # noqa: E731
            support_a, support_b, query = uploaded[index]
            body = {"data": [[file(support_a), file(support_b)], json.dumps([f"a{index}", f"b{index}"]),
                             [file(query)], ""]}
            start.wait()
            began = time.perf_counter()
            posted = http.post(f"{url}gradio_api/call/classify", json=body)
            if posted.status_code == 503:
                return "refused", time.perf_counter() - began, posted.text
            stream = http.get(f"{url}gradio_api/call/classify/{posted.json()['event_id']}").text
            data = stream.split("event: complete\ndata: ", 1)[1].strip() if "event: complete" in stream else stream
            return "answered", time.perf_counter() - began, data

        with ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(request, range(clients)))
        answered = [(i, o) for i, o in enumerate(outcomes) if o[0] == "answered"]
        refused = [o for o in outcomes if o[0] == "refused"]
        slowest_refusal = max((seconds for _, seconds, _ in refused), default=0.0)
        slowest_answer = max((o[1] for _, o in answered), default=0.0)
        print(f"{len(answered)} answered (slowest {slowest_answer:.2f} s), {len(refused)} refused "
              f"(slowest {slowest_refusal:.2f} s)")
        assert answered and refused and len(answered) + len(refused) == clients
        for index, (_, _, data) in answered:
            (answer,) = json.loads(data)
            assert answer["labels"] == [f"a{index}", f"b{index}"]
            for label, probability in alone[index].items():
                assert answer["predictions"][0][label] == pytest.approx(probability, abs=1e-4)
        assert all("Queue is full" in text for _, _, text in refused)
        assert slowest_refusal < 5  # told at once, not after the queue drains
        assert process.poll() is None
        again = Client(url, verbose=False).predict(
            [handle_file(tasks[0][0]), handle_file(tasks[0][1])], '["a", "b"]', [handle_file(tasks[0][2])],
            api_name="/classify")
        assert again["labels"] == ["a", "b"]
        assert rss_mb(process.pid) - before < 150
    finally:
        process.terminate()
        process.wait(timeout=30)
