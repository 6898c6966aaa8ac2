"""TLS on a real node: WSS, HTTPS and gRPC with a CA made by the test, the Python client over
each, and what a failed handshake costs (only its own connection).

The node has ``tls.cert_file``/``key_file`` (an IP SAN for its address), ``tls.ca_file`` and
``http.tls = true``: WSS on 5210 next to plain WS on 5200, HTTPS on 5001, and mutual TLS on the
gRPC port that the public API shares with the peer services.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from client.errors import ConnectRefused
from client.grpc import GrpcError, SyncGrpcClient
from client.http import SyncHttpClient
from client.wkproto import open_client
from launcher.devcluster import NodeProcess
from proto.wkproto import ChannelType
from tests.conftest import Api, eventually, fresh_host, start_node
from tests.integration.test_client_docs import ROOT
from tests.integration.test_client_docs import examples as doc_examples
from tests.integration.test_startup_failures import REFUSED, lone_env, run_to_exit
from tests.jsonrpc_client import b64, open_jsonrpc
from tests.tlsutil import Issued, TestCA, tls_settings

WSS_PORT = 5210
_uids = itertools.count(1)


class TlsNode:
    def __init__(self, proc: NodeProcess, ca: TestCA, client: Issued) -> None:
        self.proc = proc
        self.ca = ca
        self.client = client
        """A client certificate from the node's CA (the peer gRPC port asks for one)."""
        self.host = proc.endpoints["tcp"].rsplit(":", 1)[0]
        self.api = Api(proc.endpoints["http"], ca_file=ca.ca_file)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.ca_file))

    def user(self, prefix: str = "u", device_flag: int = 0) -> str:
        uid = f"{prefix}{next(_uids)}"
        self.api.token(uid, f"tok-{uid}", device_flag=device_flag)
        return uid

    def log(self) -> str:
        return Path(self.proc.log_path).read_text()


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    tmp = tmp_path_factory.mktemp("tls")
    host = fresh_host()
    ca = TestCA(tmp / "ca")
    issued = ca.issue("node", ips=[host])
    proc = start_node(tmp, host=host, **tls_settings(issued, ca, http__tls=True))
    node = TlsNode(proc, ca, ca.issue("client"))
    yield node
    node.api.http.close()
    proc.stop()


def test_the_node_announces_its_tls_endpoints(tls_node: TlsNode) -> None:
    host = tls_node.host
    assert tls_node.proc.endpoints["http"] == f"https://{host}:5001"
    assert tls_node.proc.endpoints["wss"] == f"wss://{host}:{WSS_PORT}"
    assert tls_node.proc.endpoints["ws"] == f"ws://{host}:5200"
    for intranet in (0, 1):
        route = tls_node.api.http.get("/route", params={"intranet": intranet}).json()
        assert route["wss_addr"] == f"wss://{host}:{WSS_PORT}"
        assert route["ws_addr"] == f"ws://{host}:5200"


def test_wkproto_over_wss_reaches_plain_websocket_and_back(tls_node: TlsNode) -> None:
    alice, bob = tls_node.user("alice"), tls_node.user("bob")
    host = tls_node.host

    async def main() -> None:
        async with (
            open_client(
                host,
                WSS_PORT,
                uid=alice,
                token=f"tok-{alice}",
                transport="ws",
                ssl_context=tls_node.context(),
            ) as a,
            open_client(host, 5200, uid=bob, token=f"tok-{bob}", transport="ws") as b,
        ):
            sent = await a.send(bob, ChannelType.PERSON, b"over wss")
            assert sent.ok
            got = await b.recv()
            assert (got.from_uid, got.payload) == (alice, b"over wss")
            assert (await b.send(alice, ChannelType.PERSON, b"back")).ok
            assert (await a.recv()).payload == b"back"

    trio.run(main)


def test_json_rpc_over_wss(tls_node: TlsNode) -> None:
    alice, bob = tls_node.user("jalice", 1), tls_node.user("jbob", 1)

    async def main() -> None:
        host, port, ctx = tls_node.host, WSS_PORT, tls_node.context()
        async with (
            open_jsonrpc(host, port, uid=alice, token=f"tok-{alice}", ssl_context=ctx) as a,
            open_jsonrpc(host, port, uid=bob, token=f"tok-{bob}", ssl_context=ctx) as b,
        ):
            result = await a.send(bob, ChannelType.PERSON, b64(b"json over wss"))
            assert result["reasonCode"] == 1, result
            got = await b.recv()
            assert got["fromUid"] == alice

    trio.run(main)


def test_the_http_api_over_https(tls_node: TlsNode) -> None:
    url = tls_node.proc.endpoints["http"]
    with SyncHttpClient(url, ca_file=str(tls_node.ca.ca_file), retries=0) as api:
        assert api.health()
        api.user_token("https-user", "tok")
        assert api.route("https-user").wss_addr == f"wss://{tls_node.host}:{WSS_PORT}"
    # A client that does not trust the CA refuses the node; plain HTTP gets no answer.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/health", timeout=5)
    with pytest.raises(httpx.TransportError):
        httpx.get(url.replace("https://", "http://") + "/health", timeout=5)
    assert tls_node.api.http.get("/health").status_code == 200


def test_the_grpc_api_over_tls(tls_node: TlsNode) -> None:
    """The public port is TLS without a client certificate; the peer port is mutual TLS."""
    target = tls_node.proc.endpoints["grpc"]
    tls_node.api.token("grpc-alice", "t")
    tls_node.api.token("grpc-bob", "t")
    with SyncGrpcClient(target, ca_file=str(tls_node.ca.ca_file), timeout_s=5) as rpc:
        sent = rpc.send("grpc-alice", "grpc-bob", ChannelType.PERSON, b"over grpc tls")
        msg = rpc.get_by_seq("grpc-bob", "grpc-alice", ChannelType.PERSON, sent.message_seq)
        assert msg.payload == b"over grpc tls"
    # Without TLS the public port does not serve.
    with SyncGrpcClient(target, timeout_s=3) as rpc, pytest.raises(GrpcError) as e:
        rpc.send("grpc-alice", "grpc-bob", ChannelType.PERSON, b"refused")
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # The peer port wants a certificate from the CA: a TLS client without one gets no call
    # through (the handshake fails before any RPC, public or peer, is looked at).
    peer = tls_node.proc.endpoints["peer"]
    client = tls_node.client
    for kwargs in ({"ca_file": str(tls_node.ca.ca_file)}, {}):
        with SyncGrpcClient(peer, timeout_s=3, **kwargs) as rpc:  # type: ignore[arg-type]
            with pytest.raises(GrpcError) as e:
                rpc.send("grpc-alice", "grpc-bob", ChannelType.PERSON, b"refused")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    # With one, the handshake passes and the port answers: it serves no public API.
    with (
        SyncGrpcClient(
            peer,
            ca_file=str(tls_node.ca.ca_file),
            cert_file=str(client.cert),
            key_file=str(client.key),
            timeout_s=3,
        ) as rpc,
        pytest.raises(GrpcError) as e,
    ):
        rpc.send("grpc-alice", "grpc-bob", ChannelType.PERSON, b"refused")
    assert e.value.code == grpc.StatusCode.UNIMPLEMENTED


def _plain_bytes_are_refused(host: str, port: int) -> None:
    """Plain HTTP into a TLS port: the node answers with a TLS alert or nothing, then closes."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while sock.recv(4096):
            assert time.monotonic() < deadline, "the connection stayed open"


def _wrong_ca_is_refused(host: str, port: int, other: TestCA) -> None:
    ctx = ssl.create_default_context(cafile=str(other.ca_file))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ctx.wrap_socket(raw, server_hostname=host)


def test_a_failed_handshake_ends_only_its_connection(tls_node: TlsNode, tmp_path: Path) -> None:
    alice, bob = tls_node.user("alice"), tls_node.user("bob")
    host = tls_node.host
    other = TestCA(tmp_path / "other", "another CA")

    async def main() -> None:
        async with (
            open_client(
                host,
                WSS_PORT,
                uid=alice,
                token=f"tok-{alice}",
                transport="ws",
                ssl_context=tls_node.context(),
            ) as a,
            open_client(host, 5100, uid=bob, token=f"tok-{bob}") as b,
        ):
            for port in (WSS_PORT, 5001, 5002, 11110):
                for _ in range(5):
                    await trio.to_thread.run_sync(_plain_bytes_are_refused, host, port)
                await trio.to_thread.run_sync(_wrong_ca_is_refused, host, port, other)
            # the session opened before is untouched, and new ones open
            assert (await a.send(bob, ChannelType.PERSON, b"still here")).ok
            assert (await b.recv()).payload == b"still here"
            async with open_client(
                host,
                WSS_PORT,
                uid=alice,
                token=f"tok-{alice}",
                transport="ws",
                ssl_context=tls_node.context(),
            ) as again:
                await again.ping()

    trio.run(main)
    assert tls_node.api.http.get("/health").status_code == 200
    log = tls_node.log()
    # one line per address and interval, whatever the number of failures
    assert log.count("TLS handshake failed; connection closed") == 1, log[-3000:]
    assert log.count("HTTPS connection failed: TLS error") == 1, log[-3000:]
    assert "Handshake failed" not in log  # grpc's own line per failure on the gRPC port
    assert "Traceback" not in log


def test_a_wss_client_that_does_not_trust_the_node_is_refused(tls_node: TlsNode) -> None:
    uid = tls_node.user()

    async def main() -> None:
        with pytest.raises((OSError, trio.BrokenResourceError, ssl.SSLError)):
            async with open_client(
                tls_node.host,
                WSS_PORT,
                uid=uid,
                token=f"tok-{uid}",
                transport="ws",
                ssl_context=ssl.create_default_context(),  # the system's CAs only
            ):
                pass

    trio.run(main)


def test_the_tls_handshake_counts_and_is_bounded_by_the_auth_timeout(tmp_path: Path) -> None:
    """One place in all (``gateway.max_connections = 1``): a silent connection to the WSS port
    holds it, so a TCP client is turned away, until the node closes the silent one at
    ``gateway.auth_timeout_s``; then the client gets in."""
    host = fresh_host()
    ca = TestCA(tmp_path / "ca")
    proc = start_node(
        tmp_path,
        host=host,
        **tls_settings(
            ca.issue("node", ips=[host]), gateway__max_connections=1, gateway__auth_timeout_s=1.5
        ),
    )
    try:
        api = Api(proc.endpoints["http"])
        api.token("late", "tok")

        def gauge(name: str) -> float:
            text = api.http.get("/metrics").text
            return next(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == name
            )

        async def main() -> None:
            silent = await trio.open_tcp_stream(host, WSS_PORT)
            opened = trio.current_time()
            # The kernel finished the TCP handshake; the node's accept may come later.
            eventually(lambda: gauge("raftchat_gateway_sockets") == 1, what="the silent socket")
            with pytest.raises(ConnectRefused):  # closed before its CONNACK
                async with open_client(host, 5100, uid="late", token="tok"):
                    pass
            assert gauge("raftchat_gateway_refused_total") == 1
            with trio.fail_after(5):
                assert await silent.receive_some(1) == b""  # closed by the node
            waited = trio.current_time() - opened
            assert 1.0 < waited < 4.0, waited
            async with open_client(host, 5100, uid="late", token="tok") as c:
                await c.ping()

        trio.run(main)
    finally:
        proc.stop()
    assert (
        "connection refused: the node is at gateway.max_connections"
        in Path(proc.log_path).read_text()
    )


def test_without_certificates_there_is_no_tls(tmp_path: Path) -> None:
    proc = start_node(tmp_path)
    try:
        assert "wss" not in proc.endpoints
        assert proc.endpoints["http"].startswith("http://")
        route = Api(proc.endpoints["http"]).http.get("/route").json()
        assert route["wss_addr"] == ""
        host = proc.endpoints["tcp"].rsplit(":", 1)[0]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, WSS_PORT), timeout=2).close()
    finally:
        proc.stop()


def test_a_node_whose_key_is_not_its_certificates_refuses_to_start(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    one, two = ca.issue("one"), ca.issue("two")
    env = lone_env(
        fresh_host(),
        tmp_path / "data",
        RAFTCHAT_TLS_CERT_FILE=str(one.cert),
        RAFTCHAT_TLS_KEY_FILE=str(two.key),
    )
    done = run_to_exit(env)
    assert done.code == REFUSED
    assert done.stderr == [
        f"raftchat: tls.key_file {two.key} is not the key of the certificate in "
        f"tls.cert_file {one.cert}"
    ]
    assert not (tmp_path / "data" / "identity.json").exists()  # refused before anything opened


@pytest.mark.parametrize("index", range(len(doc_examples(tls=True))))
def test_the_tls_examples_of_the_client_docs_run(tls_node: TlsNode, index: int) -> None:
    code = doc_examples(tls=True)[index]
    env = {
        **os.environ,
        "RAFTCHAT_HTTP": tls_node.proc.endpoints["http"],
        "RAFTCHAT_WSS": tls_node.proc.endpoints["wss"],
        "RAFTCHAT_GRPC": tls_node.proc.endpoints["grpc"],
        "RAFTCHAT_CA_FILE": str(tls_node.ca.ca_file),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
