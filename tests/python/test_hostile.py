"""A hostile client against the real binary: every attack from issue 7,
replayed with grpcio, grpcurl and raw sockets. Each must be refused
briefly, at bounded cost, with nothing sent that should not be."""

import json
import os
import signal
import socket
import subprocess
import threading
import time

import grpc
import pytest

from conftest import BINARY, ROOT, start_gateway
from fakes import (ACCOUNT, TOKEN, USER, FakeGraph, bearer, delivery, eventually, grpcurl,
                   key_entry, post_signed, reason_of)
from messenger.v1 import messenger_pb2 as pb
from messenger.v1 import messenger_pb2_grpc as rpc

ADMIN = "mgw_python_admin_0123456789abcdefghijklmnopqrstuvw"
SENDER = "mgw_python_sender_0123456789abcdefghijklmnopqrstuv"
OUTSIDER = "mgw_python_outsider_0123456789abcdefghijklmnopqrst"
WATCHER = "mgw_python_watcher_0123456789abcdefghijklmnopqrstu"


def keys_text(with_watcher=True):
    text = (key_entry("admin", ADMIN, allow=("send", "send_action", "get_window", "subscribe", "admin"))
            + key_entry("sender", SENDER, accounts=(ACCOUNT,), allow=("send",))
            + key_entry("outsider", OUTSIDER, accounts=("17841400000000999",)))
    if with_watcher:
        text += key_entry("watcher", WATCHER, allow=("subscribe",))
    return text


class Guarded:
    def __init__(self, tmp):
        self.graph = FakeGraph()
        self.keys_file = tmp / "keys.toml"
        self.keys_file.write_text(keys_text())
        self.running = start_gateway(
            ["--listen", "127.0.0.1:0", "--api-keys", str(self.keys_file),
             "--max-graph-calls", "1", "--max-queued-sends", "2"],
            self.graph.env(),
        )
        self.target = self.running.target
        self.webhook_url = self.running.line("webhooks at ").split()[2]
        self.channel = grpc.insecure_channel(self.target)
        self.stub = rpc.MessengerStub(self.channel)

    def sighup(self):
        self.running.proc.send_signal(signal.SIGHUP)

    def graph_calls(self):
        return len(self.graph.requests)

    def queued(self):
        listed = self.stub.ListAccounts(pb.ListAccountsRequest(), metadata=bearer(ADMIN), timeout=5)
        return sum(a.sends_queued for a in listed.accounts)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    g = Guarded(tmp_path_factory.mktemp("guarded"))
    yield g
    g.channel.close()
    g.running.stop()
    g.graph.close()
    log = g.running.log()
    for secret in (ADMIN, SENDER, OUTSIDER, WATCHER, TOKEN):
        assert secret not in log, "a secret reached the log"


def test_unauthenticated_send_and_subscribe_are_refused(guarded):
    before = guarded.graph_calls()
    for metadata in ((), bearer("mgw_guess"), (("authorization", "Basic YWRtaW4="),)):
        with pytest.raises(grpc.RpcError) as caught:
            guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="hi"), metadata=metadata, timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(caught.value)[0] == "API_KEY_INVALID"
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(guarded.stub.Subscribe(pb.SubscribeRequest(after=0), timeout=5)))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    out = grpcurl("-plaintext", "-d", json.dumps({"recipient_id": USER, "text": "hi"}),
                  guarded.target, "messenger.v1.Messenger/Send")
    assert out.returncode != 0 and "Unauthenticated" in out.stderr, out.stderr
    assert "API_KEY_INVALID" in out.stderr
    # Health and reflection stay open.
    assert grpcurl("-plaintext", guarded.target, "grpc.health.v1.Health/Check").returncode == 0
    assert "messenger.v1.Messenger" in grpcurl("-plaintext", guarded.target, "list").stdout
    assert guarded.graph_calls() == before


def test_a_key_outside_its_scope_is_refused_and_a_good_one_passes(guarded):
    before = guarded.graph_calls()
    with pytest.raises(grpc.RpcError) as caught:
        guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="hi"), metadata=bearer(OUTSIDER), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == ("ACCOUNT_NOT_ALLOWED", {"keyId": "outsider", "account": ACCOUNT})
    with pytest.raises(grpc.RpcError) as caught:
        guarded.stub.GetWindow(pb.GetWindowRequest(recipient_id=USER), metadata=bearer(SENDER), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == ("OPERATION_NOT_ALLOWED", {"keyId": "sender", "operation": "get_window"})
    assert guarded.graph_calls() == before
    out = grpcurl("-plaintext", "-H", f"authorization: Bearer {SENDER}",
                  "-d", json.dumps({"recipient_id": USER, "text": "from grpcurl"}),
                  guarded.target, "messenger.v1.Messenger/Send")
    assert out.returncode == 0, out.stderr
    assert guarded.graph_calls() == before + 1
    # Every line of the call names the key, never its secret.
    eventually("the call logged", lambda: "sender" in guarded.running.log())


def test_amplification_requests_get_small_answers_and_small_log_lines(guarded):
    # 2 bytes each: 60,000 fit under the gateway's 128 KiB request limit,
    # and are counted (and refused) before they are decoded.
    request = pb.SendRequest(recipient_id=USER, text="pick", quick_replies=[pb.QuickReply()] * 60_000)
    assert 100_000 < len(request.SerializeToString()) < 128 * 1024
    with pytest.raises(grpc.RpcError) as caught:
        guarded.stub.Send(request, metadata=bearer(ADMIN), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(caught.value.trailing_metadata())
    size = len(trailers["grpc-status-details-bin"]) + len(caught.value.details().encode())
    assert size < 8 * 1024, size
    element = pb.TemplateElement(buttons=[pb.Button()] * 3)
    with pytest.raises(grpc.RpcError) as caught:
        guarded.stub.Send(pb.SendRequest(recipient_id="x" * 100_000,
                                         generic_template=pb.GenericTemplate(elements=[element] * 10)),
                          metadata=bearer(ADMIN), timeout=10)
    trailers = dict(caught.value.trailing_metadata())
    assert len(trailers["grpc-status-details-bin"]) + len(caught.value.details().encode()) < 8 * 1024
    # The first was refused on the wire, before its call was handled.
    eventually("the second refusal logged", lambda: "INVALID_REQUEST" in guarded.running.log())
    longest = max(len(line.encode()) for line in guarded.running.log().splitlines())
    assert longest < 2048, longest


def test_over_size_and_non_utf8_requests_carry_error_info(guarded):
    with pytest.raises(grpc.RpcError) as caught:
        guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="x" * 300_000), metadata=bearer(ADMIN), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value)[0] == "MESSAGE_TOO_LARGE"
    raw = guarded.channel.unary_unary("/messenger.v1.Messenger/Send",
                                      request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
    # Field 1 (recipient_id), two bytes that are not UTF-8.
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\x0a\x02\xff\xfe", metadata=bearer(ADMIN), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value)[0] == "INVALID_REQUEST"


def test_control_characters_and_impossible_resume_points_are_invalid(guarded):
    with pytest.raises(grpc.RpcError) as caught:
        guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="a\x1b[2Jb"), metadata=bearer(ADMIN), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(guarded.stub.Subscribe(pb.SubscribeRequest(after=2**64 - 1), metadata=bearer(ADMIN), timeout=5)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    out = grpcurl("-plaintext", "-H", f"authorization: Bearer {ADMIN}", "-d", '{"after": "18446744073709551615"}',
                  guarded.target, "messenger.v1.Messenger/Subscribe")
    assert "InvalidArgument" in out.stderr, out.stderr


def test_cancelled_and_expired_queued_sends_never_reach_graph(guarded):
    guarded.graph.hold()
    try:
        before = guarded.graph_calls()
        first = guarded.stub.Send.future(pb.SendRequest(recipient_id=USER, text="under way"),
                                         metadata=bearer(ADMIN), timeout=60)
        eventually("the first at Graph", lambda: guarded.graph.waiting == 1)
        abandoned = guarded.stub.Send.future(pb.SendRequest(recipient_id=USER, text="abandoned"),
                                             metadata=bearer(ADMIN), timeout=60)
        eventually("the second queued", lambda: guarded.queued() == 1)
        abandoned.cancel()
        eventually("the cancelled send leaves the queue", lambda: guarded.queued() == 0)
        with pytest.raises(grpc.RpcError) as caught:
            guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="too late"),
                              metadata=bearer(ADMIN), timeout=0.4)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        # grpc-timeout of a nanosecond.
        with pytest.raises(grpc.RpcError):
            guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="1n"), metadata=bearer(ADMIN), timeout=1e-9)
        guarded.graph.release()
        first.result()
        # One slot, first come first served: anything still queued would
        # have gone before this.
        guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="after"), metadata=bearer(ADMIN), timeout=30)
        sent = [json.loads(b)["message"]["text"] for _, b in guarded.graph.requests[before:]]
        assert sent == ["under way", "after"], sent
    finally:
        guarded.graph.release()


def test_a_full_queue_is_overloaded_with_retry_info(guarded):
    guarded.graph.hold()
    try:
        futures = [guarded.stub.Send.future(pb.SendRequest(recipient_id=USER, text=f"q{i}"),
                                            metadata=bearer(ADMIN), timeout=60) for i in range(3)]
        eventually("one at Graph", lambda: guarded.graph.waiting == 1)
        eventually("two queued", lambda: guarded.queued() == 2)
        with pytest.raises(grpc.RpcError) as caught:
            guarded.stub.Send(pb.SendRequest(recipient_id=USER, text="one too many"), metadata=bearer(ADMIN), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_of(caught.value)[0] == "OVERLOADED"
        guarded.graph.release()
        for f in futures:
            f.result()
    finally:
        guarded.graph.release()


def raw_connection(url, data=b""):
    host, port = url.split("//")[1].split("/")[0].split(":")
    s = socket.create_connection((host, int(port)))
    if data:
        s.sendall(data)
    return s


def test_stalled_and_oversized_webhook_connections_do_not_stop_valid_deliveries(guarded):
    stalled = [raw_connection(guarded.webhook_url, b"POST /webhook HTTP/1.1\r\nhost: x\r\n") for _ in range(50)]
    silent = [raw_connection(guarded.webhook_url) for _ in range(50)]
    oversized = raw_connection(guarded.webhook_url,
                               b"POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: sha256=" + b"a" * 64
                               + b"\r\ncontent-length: 104857600\r\n\r\n")
    oversized.settimeout(3)
    assert b" 413 " in oversized.recv(256)
    unsigned = raw_connection(guarded.webhook_url, b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n\r\n")
    unsigned.settimeout(3)
    assert b" 401 " in unsigned.recv(256)
    for i in range(20):
        assert post_signed(guarded.webhook_url, delivery(f"flowing-{i}")) == 200
    for s in stalled + silent + [oversized, unsigned]:
        s.close()


def test_a_revoked_key_loses_its_stream_at_once(guarded):
    stream = guarded.stub.Subscribe(pb.SubscribeRequest(after=0), metadata=bearer(WATCHER), timeout=30)
    received = []
    ended = threading.Event()

    def read():
        try:
            for event in stream:
                received.append(event)
        except grpc.RpcError as e:
            received.append(e)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.3)
    guarded.keys_file.write_text("[[key]\nbroken")
    guarded.sighup()
    time.sleep(0.5)
    assert not ended.is_set(), "a bad file changes nothing"
    guarded.keys_file.write_text(keys_text(with_watcher=False))
    guarded.sighup()
    assert ended.wait(5), "the stream ended"
    assert isinstance(received[-1], grpc.RpcError)
    assert received[-1].code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(guarded.stub.Subscribe(pb.SubscribeRequest(after=0), metadata=bearer(WATCHER), timeout=5)))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    eventually("the bad file logged", lambda: "API keys not reloaded" in guarded.running.log())


def test_a_redirecting_graph_keeps_the_token(tmp_path):
    graph = FakeGraph()
    graph.redirect = True
    running = start_gateway(["--listen", "127.0.0.1:0"], graph.env())
    try:
        with grpc.insecure_channel(running.target) as channel:
            with pytest.raises(grpc.RpcError):
                rpc.MessengerStub(channel).Send(pb.SendRequest(recipient_id=USER, text="hi"), timeout=5)
        assert [path for path, _ in graph.requests] == [f"/v25.0/{ACCOUNT}/messages"]
    finally:
        running.stop()
        graph.close()


def test_an_http_graph_off_this_machine_is_refused_at_start():
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTAGRAM_")}
    env.update({"INSTAGRAM_GRAPH_API_URL": "http://graph.example.com/v25.0",
                "INSTAGRAM_USER_ID": ACCOUNT, "INSTAGRAM_ACCESS_TOKEN": TOKEN})
    out = subprocess.run([BINARY, "serve", "--listen", "127.0.0.1:0"], env=env,
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert "https://" in out.stderr
    assert TOKEN not in out.stderr


def test_reflection_can_be_turned_off_while_health_stays():
    running = start_gateway(["--listen", "127.0.0.1:0", "--sandbox", "--reflection", "off"])
    try:
        assert grpcurl("-plaintext", running.target, "list").returncode != 0
        assert grpcurl("-plaintext", "-import-path", str(ROOT / "proto"), "-proto", "messenger/v1/messenger.proto",
                       "-d", json.dumps({"account_id": "shop", "recipient_id": USER, "text": "no reflection needed"}),
                       running.target, "messenger.v1.Messenger/Send").returncode == 0
    finally:
        running.stop()
