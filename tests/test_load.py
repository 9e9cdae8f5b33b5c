"""Isolation under load: 32 gradio_client clients with distinct tasks against one app process."""

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

import fewshot_serve
from conftest import draw_glyph, free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "omniglot-conv4.safetensors"
CLIENTS, FIRST_ROUND, TOTAL = 32, 10, 1000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def app_process():
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)],
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
    yield process, f"http://127.0.0.1:{port}/"
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's memory")
def test_32_clients_get_their_own_answers_and_memory_stays_bounded(app_process, tmp_path):
    process, url = app_process
    tasks = []
    for client in range(CLIENTS):
        files = []
        for role, (cls, seed) in enumerate([(0, 0), (1, 0), (0, 1)]):  # support a, support b, query
            path = tmp_path / f"client{client}_{role}.png"
            draw_glyph(300 + 2 * client + cls, 10 * client + seed).save(path)
            files.append(str(path))
        tasks.append(files)
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
