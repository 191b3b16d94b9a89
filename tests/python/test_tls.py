"""TLS and mutual TLS end to end, with certificates made for the test:
grpcio's ssl_channel_credentials and grpcurl's -cacert/-cert/-key, a
client certificate identity standing in for a bearer key, the webhook
port over HTTPS, and certificates reloaded on SIGHUP."""

import datetime
import ipaddress
import json
import signal
import ssl
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import start_gateway
from fakes import USER, FakeGraph, bearer, delivery, grpcurl, key_entry, post_signed, reason_of
from messenger.v1 import messenger_pb2 as pb
from messenger.v1 import messenger_pb2_grpc as rpc

SPIFFE = "spiffe://prod/billing"
SECRET = "mgw_tls_bearer_0123456789abcdefghijklmnopqrstuvwxy"


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Ca:
    def __init__(self, cn):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn, sans, client=False):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM), _pem(key)


LOCALHOST = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


def write(path, data):
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = Ca("test ca")
    server_cert, server_key = ca.issue("localhost", LOCALHOST)
    client_cert, client_key = ca.issue("billing", [x509.UniformResourceIdentifier(SPIFFE)], client=True)
    stranger_cert, stranger_key = ca.issue("stranger", [x509.UniformResourceIdentifier("spiffe://prod/x")], client=True)
    return {
        "dir": d,
        "ca_pem": ca.pem,
        "ca": write(d / "ca.pem", ca.pem),
        "server_cert": write(d / "server.pem", server_cert),
        "server_key": write(d / "server.key", server_key),
        "client_cert": write(d / "client.pem", client_cert),
        "client_key": write(d / "client.key", client_key),
        "client_cert_pem": client_cert,
        "client_key_pem": client_key,
        "stranger_cert_pem": stranger_cert,
        "stranger_key_pem": stranger_key,
    }


def authority(target):
    return "localhost:" + target.rsplit(":", 1)[1]


def test_mutual_tls_admits_a_certificate_identity_with_python_and_grpcurl(pki, tmp_path):
    graph = FakeGraph()
    keys = tmp_path / "keys.toml"
    keys.write_text(key_entry("billing", client_cert=SPIFFE, allow=("send", "subscribe")))
    running = start_gateway(
        ["--listen", "127.0.0.1:0", "--api-keys", str(keys),
         "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-client-ca", pki["ca"]],
        graph.env())
    try:
        target = authority(running.target)
        creds = grpc.ssl_channel_credentials(pki["ca_pem"], pki["client_key_pem"], pki["client_cert_pem"])
        with grpc.secure_channel(target, creds) as channel:
            reply = rpc.MessengerStub(channel).Send(pb.SendRequest(recipient_id=USER, text="over mTLS"), timeout=10)
            assert reply.message_id
            # The identity's scope holds: no get_window for this entry.
            with pytest.raises(grpc.RpcError) as caught:
                rpc.MessengerStub(channel).GetWindow(pb.GetWindowRequest(recipient_id=USER), timeout=10)
            assert reason_of(caught.value)[0] == "OPERATION_NOT_ALLOWED"
        # A certificate from the right CA but with no entry: not let in.
        stranger = grpc.ssl_channel_credentials(pki["ca_pem"], pki["stranger_key_pem"], pki["stranger_cert_pem"])
        with grpc.secure_channel(target, stranger) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                rpc.MessengerStub(channel).Send(pb.SendRequest(recipient_id=USER, text="x"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # No client certificate at all: the handshake fails.
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(pki["ca_pem"])) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                rpc.MessengerStub(channel).Send(pb.SendRequest(recipient_id=USER, text="x"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        out = grpcurl("-cacert", pki["ca"], "-cert", pki["client_cert"], "-key", pki["client_key"],
                      "-d", json.dumps({"recipient_id": USER, "text": "grpcurl over mTLS"}),
                      target, "messenger.v1.Messenger/Send")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["messageId"]
        assert len(graph.requests) == 2
    finally:
        running.stop()
        graph.close()


def test_tls_with_a_bearer_key_and_https_webhooks_and_a_sighup_reload(pki, tmp_path):
    graph = FakeGraph()
    keys = tmp_path / "keys.toml"
    keys.write_text(key_entry("svc", SECRET))
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(open(pki["server_cert"], "rb").read())
    key.write_bytes(open(pki["server_key"], "rb").read())
    running = start_gateway(
        ["--listen", "127.0.0.1:0", "--api-keys", str(keys), "--tls-cert", str(cert), "--tls-key", str(key),
         "--webhook-tls-cert", str(cert), "--webhook-tls-key", str(key)],
        graph.env())
    try:
        target = authority(running.target)
        old = grpc.secure_channel(target, grpc.ssl_channel_credentials(pki["ca_pem"]))
        stub = rpc.MessengerStub(old)
        stub.Send(pb.SendRequest(recipient_id=USER, text="over TLS"), metadata=bearer(SECRET), timeout=10)
        out = grpcurl("-cacert", pki["ca"], "-H", f"authorization: Bearer {SECRET}",
                      "-d", json.dumps({"recipient_id": USER, "text": "grpcurl over TLS"}),
                      target, "messenger.v1.Messenger/Send")
        assert out.returncode == 0, out.stderr
        assert grpcurl("-plaintext", target, "list").returncode != 0, "no plaintext on a TLS port"

        webhook = running.line("webhooks at ").split()[2]
        assert webhook.startswith("https://")
        context = ssl.create_default_context(cadata=pki["ca_pem"].decode())
        assert post_signed(webhook.replace("127.0.0.1", "localhost"), delivery("over-https"), context) == 200

        # A new CA's certificate, swapped in on SIGHUP.
        new_ca = Ca("second ca")
        new_cert, new_key = new_ca.issue("localhost", LOCALHOST)
        cert.write_bytes(new_cert)
        key.write_bytes(new_key)
        running.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(new_ca.pem)) as fresh:
            rpc.MessengerStub(fresh).Send(pb.SendRequest(recipient_id=USER, text="after reload"),
                                          metadata=bearer(SECRET), timeout=10)
        # The connection opened before the reload keeps working.
        stub.Send(pb.SendRequest(recipient_id=USER, text="old connection"), metadata=bearer(SECRET), timeout=10)
        old.close()
        assert len(graph.requests) == 4
    finally:
        running.stop()
        graph.close()
