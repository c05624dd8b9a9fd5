"""A slow esbuild: the real one behind a relay that holds each build request back.

esbuild runs as a long-lived service (bundler.esbuild_service), so a wrapper that
sleeps before starting it would delay only its start; this one delays every build,
as a slow build would. The relay reads the requests on their way in (with the
service's own decoder: it decodes what esbuild decodes), passes each build on after
its delay and everything else at once; esbuild answers on the relay's own stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RELAY = """#!{python}
import os, struct, subprocess, sys, threading, time
sys.path.insert(0, {root!r})
from bundler.esbuild_service import decode

if "--version" in sys.argv:
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
esbuild = subprocess.Popen([{real!r}, *sys.argv[1:]], stdin=subprocess.PIPE)
lock = threading.Lock()


def send(data):
    with lock:
        esbuild.stdin.write(data)
        esbuild.stdin.flush()


def later(delay, data):
    time.sleep(delay)
    send(data)


stdin = sys.stdin.buffer
while len(head := stdin.read(4)) == 4:
    body = stdin.read(struct.unpack("<I", head)[0])
    value, _ = decode(body, 4)
    if isinstance(value, dict) and value.get("command") == "build":
        texts = [open(path).read() for _, path in value["entries"]]
        fallback = any('mode: "fallback"' in text for text in texts)
        with open({log!r}, "a") as log:
            log.write("build\\n")
        delay = {fallback_delay} if fallback else {tailored_delay}
        threading.Thread(target=later, args=(delay, head + body), daemon=True).start()
    else:
        send(head + body)
esbuild.stdin.close()
esbuild.wait()
"""


def delayed_esbuild(
    tmp_path: Path, real: str, *, fallback_delay: float, tailored_delay: float
) -> tuple[str, Path]:
    """(the fake's path, its log: one line per build it was asked for). A fallback's
    build (its entry says mode "fallback") waits ``fallback_delay`` s, others
    ``tailored_delay`` s."""
    name = f"esbuild-delayed-{fallback_delay}-{tailored_delay}"
    path = tmp_path / name
    log = tmp_path / f"{name}.log"
    path.write_text(
        RELAY.format(
            python=sys.executable,
            root=str(ROOT),
            real=real,
            log=str(log),
            fallback_delay=fallback_delay,
            tailored_delay=tailored_delay,
        )
    )
    path.chmod(0o755)
    return str(path), log
