"""Serving beyond localhost: logins (file, hashed, environment), refusing open binds, the queue's limits."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import draw_glyph, free_port
from gradio_client import Client, handle_file

from fewshot_serve.serving.auth import AUTH_ENV, Credentials, hash_password, is_loopback
from fewshot_serve.serving.web_app import launch

pytestmark = pytest.mark.slow  # servers, browsers, subprocesses or real data: not in the quick tier

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "omniglot-conv4.safetensors"


def test_credentials_from_a_file_with_plain_and_hashed_passwords_and_from_the_environment(tmp_path):
    auth_file = tmp_path / "users.txt"
    auth_file.write_text(f"# team\nalice:wonderland\nbob:{hash_password('builder')}\n\n")
    credentials = Credentials.load(auth_file, environ={AUTH_ENV: "carol:c4rol, dave:d:a:v:e"})
    assert credentials("alice", "wonderland") and credentials("bob", "builder") and credentials("carol", "c4rol")
    assert credentials("dave", "d:a:v:e")  # only the first ':' separates
    assert not credentials("alice", "Wonderland") and not credentials("bob", hash_password("builder"))
    assert not credentials("mallory", "wonderland") and not credentials("alice", "")
    assert Credentials.load(None, environ={}) is None
    auth_file.write_text("no separator here\n")
    with pytest.raises(ValueError, match="line 1: expected 'user:password'"):
        Credentials.load(auth_file, environ={})
    with pytest.raises(ValueError, match="does not exist"):
        Credentials.load(tmp_path / "missing.txt", environ={})


def test_hashed_passwords_are_salted():
    first, second = hash_password("same"), hash_password("same")
    assert first != second and first.startswith("pbkdf2_sha256$")
    assert Credentials({"u": first})("u", "same") and Credentials({"u": second})("u", "same")


def test_hash_password_command_prints_an_auth_file_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fewshot_serve.cli", "hash-password", "erin"], input="s3cret\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    (tmp_path / "users.txt").write_text(line + "\n")
    assert Credentials.load(tmp_path / "users.txt", environ={})("erin", "s3cret")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("0.0.0.0", False), ("", False), ("192.168.1.10", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_an_open_bind_without_a_login_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="--auth-file FILE .*or --no-auth"):
        launch([SHIPPED], host="0.0.0.0", port=free_port(), block=False)
    with pytest.raises(ValueError, match="without a login"):
        launch([SHIPPED], share=True, port=free_port(), block=False)
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0"], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in __import__("os").environ.items() if k != AUTH_ENV})
    assert done.returncode == 2 and "refusing to serve 0.0.0.0 without a login" in done.stderr


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guarded")
    paths = []
    for c in range(2):
        path = folder / f"c{c}.png"
        draw_glyph(70 + c, c).save(path)
        paths.append(str(path))
    port = free_port()
    app = launch([SHIPPED], port=port, block=False, credentials=Credentials({"alice": hash_password("wonderland")}))
    yield f"http://127.0.0.1:{port}/", paths
    app.close()


def classify(client, paths):
    return client.predict([handle_file(p) for p in paths], json.dumps(["a", "b"]), [handle_file(paths[0])],
                          api_name="/classify")


def test_api_needs_the_right_login(guarded):
    url, paths = guarded
    assert classify(Client(url, auth=("alice", "wonderland"), verbose=False), paths)["labels"] == ["a", "b"]
    for auth in (None, ("alice", "wrong"), ("mallory", "wonderland")):
        with pytest.raises(Exception):  # noqa: B017 (gradio_client raises a different type per refusal)
            classify(Client(url, auth=auth, verbose=False), paths)
    # nor can plain HTTP reach the app's configuration or its API without the login cookie
    assert httpx.get(f"{url}config").status_code == 401
    assert httpx.post(f"{url}gradio_api/call/classify", json={"data": []}).status_code == 401
    assert httpx.post(f"{url}login", data={"username": "alice", "password": "wrong"}).status_code == 400
