"""Starts the real gateway binary in sandbox mode and generates grpcio stubs
from proto/ for the Python tests."""

import json
import os
import pathlib
import subprocess
import tempfile
import sys
import threading
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GEN = pathlib.Path(__file__).resolve().parent / "_gen"


def _generate_stubs():
    import grpc_tools
    from grpc_tools import protoc

    GEN.mkdir(exist_ok=True)
    # google/protobuf/timestamp.proto ships inside grpc_tools.
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--python_out={GEN}",
            f"--grpc_python_out={GEN}",
            str(ROOT / "proto/messenger/v1/messenger.proto"),
        ]
    )
    assert rc == 0, "protoc failed"
    for d in (GEN / "messenger", GEN / "messenger" / "v1"):
        (d / "__init__.py").touch()
    sys.path.insert(0, str(GEN))


_generate_stubs()


class Gateway:
    def __init__(self, proc, target, sandbox_url):
        self.proc = proc
        self.target = target
        self.sandbox_url = sandbox_url

    def say(self, sender_id, text, age=None):
        """Plays the Instagram user through the sandbox: a signed webhook."""
        body = {"sender_id": sender_id, "text": text}
        if age:
            body["age"] = age
        request = urllib.request.Request(
            f"{self.sandbox_url}/sandbox/inbound",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request) as r:
            return json.load(r)

    def sandbox_messages(self):
        with urllib.request.urlopen(f"{self.sandbox_url}/sandbox/messages") as r:
            return json.load(r)["messages"]


BINARY = os.environ.get("MESSENGER_GATEWAY_BIN", str(ROOT / "target/debug/messenger-gateway"))


class Running:
    """A gateway process and the banner it printed."""

    def __init__(self, proc, banner, log_path):
        self.proc = proc
        self.banner = banner
        self.log_path = log_path
        self.target = banner[-1].split()[3]

    def line(self, prefix):
        return next(l for l in self.banner if l.startswith(prefix))

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=20) == 0, "the gateway exits 0 on SIGTERM"


def start_gateway(args, env=None):
    """Starts the binary with `args` and only the INSTAGRAM_* variables in
    `env`; stderr (the log) goes to a file the test can read."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INSTAGRAM_")}
    # Tests run side by side: never the default admin port.
    clean["MESSENGER_GATEWAY_ADMIN_LISTEN"] = "127.0.0.1:0"
    clean.update(env or {})
    log_path = tempfile.mktemp(prefix="mg-log-")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [BINARY, "serve", "--webhook-listen", "127.0.0.1:0",
         "--data-dir", tempfile.mkdtemp(prefix="mg-data-"), *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=clean,
    )
    banner = []
    found = threading.Event()

    def read():
        for line in proc.stdout:
            banner.append(line.strip())
            if line.startswith("messenger-gateway listening on "):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(30):
        proc.kill()
        pytest.fail(f"the gateway printed no banner: {banner}")
    return Running(proc, banner, log_path)


@pytest.fixture(scope="session")
def gateway():
    running = start_gateway(["--listen", "127.0.0.1:0", "--sandbox"])
    base = running.line("sandbox Graph API at ").split()[4]  # http://127.0.0.1:PORT/v25.0
    sandbox_url = base.rsplit("/", 1)[0]
    yield Gateway(running.proc, running.target, sandbox_url)
    running.stop()
