"""Who may use the web app: user names and passwords for Gradio's own login, page and API alike.

Credentials come from a file (``--auth-file``: one ``user:password`` or ``user:pbkdf2_sha256$...``
per line, ``#`` comments allowed) and/or the ``FEWSHOT_SERVE_AUTH`` environment variable
(``user:password`` pairs separated by commas). Hashed entries are made by
``fewshot-serve hash-password``, so a deployed file need not hold a password in clear text.
Passwords are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path

AUTH_ENV = "FEWSHOT_SERVE_AUTH"
HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 200_000


def hash_password(password: str, salt: str | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HEX``: what an auth file may hold instead of the password."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{HASH_SCHEME}${iterations}${salt}${digest}"


def _matches(stored: str, password: str) -> bool:
    if stored.startswith(HASH_SCHEME + "$"):
        try:
            _, iterations, salt, _ = stored.split("$")
            expected = hash_password(password, salt, int(iterations))
        except ValueError:
            return False
        return hmac.compare_digest(stored, expected)
    return hmac.compare_digest(stored.encode(), password.encode())


class Credentials:
    """The accepted ``user -> password or hash``; call it as Gradio's ``auth(username, password)``."""

    def __init__(self, entries: dict[str, str]) -> None:
        if not entries:
            raise ValueError("no credentials given")
        self.entries = dict(entries)

    def __call__(self, username: str, password: str) -> bool:
        stored = self.entries.get(username)
        return stored is not None and _matches(stored, password)

    @classmethod
    def load(cls, auth_file: str | os.PathLike | None = None, environ: dict[str, str] | None = None
             ) -> Credentials | None:
        """Credentials from ``auth_file`` and ``$FEWSHOT_SERVE_AUTH`` together; None if neither gives any."""
        environ = os.environ if environ is None else environ
        entries: dict[str, str] = {}
        if auth_file is not None:
            path = Path(auth_file)
            if not path.is_file():
                raise ValueError(f"auth file {path} does not exist")
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    user, password = _pair(line.strip(), f"{path} line {number}")
                    entries[user] = password
        for index, item in enumerate(filter(None, (p.strip() for p in environ.get(AUTH_ENV, "").split(","))), 1):
            user, password = _pair(item, f"${AUTH_ENV} entry {index}")
            entries[user] = password
        return cls(entries) if entries else None


def _pair(text: str, where: str) -> tuple[str, str]:
    user, separator, password = text.partition(":")
    if not separator or not user.strip() or not password:
        raise ValueError(f"{where}: expected 'user:password' or 'user:{HASH_SCHEME}$...'")
    return user.strip(), password


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to bind) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False
