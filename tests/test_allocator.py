"""The command line keeps freed memory for reuse (glibc's malloc settings)."""

import io
import platform
import subprocess
import sys

from fewshot_serve import cli

PROBE = """
from fewshot_serve.serving.allocator import keep_freed_memory
print(keep_freed_memory())
"""


def test_keep_freed_memory_applies_under_glibc_and_declines_elsewhere():
    # a fresh process: the settings are process-wide, and this one's tests should not depend on them
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    expected = "True" if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else "False"
    assert done.stdout.strip() == expected


def test_every_command_runs_with_the_setting(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert cli.main(["hash-password", "erin"]) == 0
    assert calls == [1]
    assert capsys.readouterr().out.startswith("erin:")
