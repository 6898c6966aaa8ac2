"""The public gRPC API from another language, from the .proto files alone: Node with the npm
packages @grpc/grpc-js and @grpc/proto-loader against a real three-node cluster. A group is
created on node 1, subscribed to on node 2, a message sent on node 3 is read back by seq on
node 1 and arrives on the stream; a send to a missing channel shows the error model. Calls
carry the API token as ``authorization: Bearer`` metadata; one without it is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, fresh_host, start_node
from tests.tlsutil import TestCA, tls_settings

pytestmark = pytest.mark.e2e
API_TOKEN = "grpcjs-api-token"

HARNESS = Path(__file__).parent / "grpcjs"
REPO = Path(__file__).resolve().parents[2]


def run_scenario(
    spec: dict[str, Any], timeout_s: float = 60, expect_ok: bool = True
) -> dict[str, Any]:
    node_bin = shutil.which("node")
    assert node_bin, "Node.js is required for this test (make test installs everything)"
    assert (HARNESS / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run `make test` (it runs npm ci in tests/e2e/grpcjs)"
    )
    proc = subprocess.run(
        [node_bin, "scenario.mjs", json.dumps(spec)],
        cwd=HARNESS,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the grpc-js harness:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    if expect_ok:
        assert proc.returncode == 0 and result.get("ok"), (result, proc.stderr[-3000:])
    else:
        assert proc.returncode != 0 and not result.get("ok"), result
    return result


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 3, auth__api_token=API_TOKEN)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_grpc_js_sends_reads_by_seq_and_subscribes_on_three_nodes(cluster3: Cluster) -> None:
    result = run_scenario(
        {
            "nodes": [f"{cluster3.hosts[i]}:5002" for i in (1, 2, 3)],
            "api_token": API_TOKEN,
            "proto_root": str(REPO),
            "channel_id": "js-room",
            "timeout_ms": 40000,
        }
    )
    check_scenario(result)


def test_grpc_js_over_tls_with_a_test_ca(tmp_path: Path) -> None:
    """The same scenario on one node over TLS: grpc-js checks the node's certificate against
    the CA the test made (``grpc.credentials.createSsl``) and its address against the IP SAN.
    The public port asks for no client certificate, even with ``tls.ca_file`` set (which makes
    only the peer port mutual TLS)."""
    host = fresh_host()
    ca = TestCA(tmp_path / "ca")
    settings = tls_settings(ca.issue("node", ips=[host]), ca)
    node = start_node(tmp_path, host=host, auth__api_token=API_TOKEN, **settings)
    try:
        result = run_scenario(
            {
                "nodes": [node.endpoints["grpc"]] * 3,
                "proto_root": str(REPO),
                "channel_id": "js-room",
                "timeout_ms": 40000,
                "api_token": API_TOKEN,
                "ca_file": str(ca.ca_file),
            }
        )
        check_scenario(result)
        # without the CA, grpc-js refuses the node (and the node is not reached)
        refused = run_scenario(
            {
                "nodes": [node.endpoints["grpc"]] * 3,
                "proto_root": str(REPO),
                "timeout_ms": 20000,
                "ca_file": str(TestCA(tmp_path / "other").ca_file),
            },
            expect_ok=False,
        )
        assert refused["error"].startswith("14 "), refused  # UNAVAILABLE
    finally:
        node.stop()


def check_scenario(result: dict[str, Any]) -> None:
    sent = result["sent"]
    assert sent["message_seq"] == 1 and int(sent["message_id"]) > 0
    # int64 ids survive as decimal strings (longs: String), equal on every path.
    assert result["by_seq"] == {
        "message_id": sent["message_id"],
        "message_seq": 1,
        "from_uid": "js-alice",
        "client_msg_no": "js-1",
        "payload": "hello from grpc-js",
    }
    assert result["streamed"] == {
        "message_id": sent["message_id"],
        "message_seq": 1,
        "channel_id": "js-room",
        "payload": "hello from grpc-js",
    }
    assert result["start_positions"] == [0]
    assert result["missing_channel"] == {
        "code": 5,  # NOT_FOUND
        "details": "channel js-missing does not exist",
        "reason_code": "5",  # ChannelNotExist
        "has_status_details": True,
    }
    assert result["without_token"] == {"code": 16}  # UNAUTHENTICATED
    assert "stream_error" not in result, result["stream_error"]
