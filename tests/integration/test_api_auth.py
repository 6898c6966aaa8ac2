"""Credentials on the APIs of real nodes, and the secrets they keep at rest and out of logs.

Each attack of an attacker on the cluster's network is tried as it was before the APIs had
credentials: minting a user token without one, changing the cluster map without the admin
token, calling the public gRPC API on the peer port, reading user tokens out of a data
directory, and finding a secret in a log. Token expiry is here too (CONNACK reason 2).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio

from client.errors import ConnectRefused
from client.wkproto import open_client
from cluster.peerauth import peer_key
from launcher.devcluster import NodeProcess
from proto.raftchat.v1 import api_pb2, api_pb2_grpc
from proto.wkproto import ReasonCode
from tests.conftest import Api, Cluster, eventually, start_node

API = "it-api-token-3f9c1d"
ADMIN = "it-admin-token-7b2e55"
BEARER = (("authorization", f"Bearer {API}"),)
ADMIN_BEARER = (("authorization", f"Bearer {ADMIN}"),)


def connack(node: NodeProcess, uid: str, token: str, device_flag: int = 0) -> ReasonCode:
    """The reason code of a CONNECT of ``uid`` with ``token`` to ``node``."""
    host, port = node.endpoints["tcp"].rsplit(":", 1)

    async def main() -> ReasonCode:
        try:
            async with open_client(host, int(port), uid=uid, token=token, device_flag=device_flag):
                return ReasonCode.SUCCESS
        except ConnectRefused as e:
            return ReasonCode(e.reason_code)

    return trio.run(main)


def bare(node: NodeProcess) -> httpx.Client:
    """An HTTP client that sends no credential unless told."""
    return httpx.Client(base_url=node.endpoints["http"], timeout=10.0)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = start_node(
        tmp_path_factory.mktemp("secured"), auth__api_token=API, auth__admin_token=ADMIN
    )
    yield node
    node.stop()


# ---- the HTTP API --------------------------------------------------------------------------------


def test_minting_a_user_token_needs_the_api_token(secured: NodeProcess) -> None:
    """Before: anyone who reached port 5001 could set any user's token and log in as them."""
    with bare(secured) as http:
        body = {"uid": "victim", "token": "minted-by-attacker"}
        for headers in ({}, {"token": "guess"}, {"token": ADMIN}, {"Authorization": "Basic x"}):
            resp = http.post("/user/token", json=body, headers=headers)
            assert resp.status_code == 401, headers
            answer = resp.json()
            assert answer["status"] == 401 and set(answer) == {"msg", "status"}
            assert "guess" not in answer["msg"] and ADMIN not in answer["msg"]
            assert resp.headers["www-authenticate"].startswith("Bearer")
        assert connack(secured, "victim", "minted-by-attacker") == ReasonCode.AUTH_FAIL
        # The app's backend, with the token in either header.
        assert http.post("/user/token", json=body, headers={"token": API}).status_code == 200
        body = {"uid": "victim", "token": "set-by-backend"}
        auth = {"Authorization": f"Bearer {API}"}
        assert http.post("/user/token", json=body, headers=auth).status_code == 200
    assert connack(secured, "victim", "set-by-backend") == ReasonCode.SUCCESS


def test_health_and_the_client_route_need_no_token(secured: NodeProcess) -> None:
    with bare(secured) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/route", params={"uid": "u1"}).json()["tcp_addr"]
        assert http.get("/route", params={"intranet": "1"}).status_code == 401
        assert http.post("/route/batch", json=["u1"]).status_code == 401
        # Without a token nothing says which routes exist.
        assert http.get("/no/such/route").status_code == 401
        assert http.get("/no/such/route", headers={"token": API}).status_code == 404
        # A lone node's cluster routes take the admin token, not the API token.
        assert http.get("/cluster/status", headers={"token": API}).status_code == 401
        assert http.get("/cluster/status", headers={"token": ADMIN}).status_code == 200


# ---- the public gRPC API -------------------------------------------------------------------------


def test_the_peer_port_serves_no_public_rpc_and_the_public_port_needs_the_token(
    secured: NodeProcess,
) -> None:
    """Before: the public API shared the peer port, without a credential, so the rule that only
    the cluster's nodes reach that port could not be kept."""
    request = api_pb2.TokenRequest(uid="grpc-user", token="via-grpc")
    host = secured.endpoints["tcp"].rsplit(":", 1)[0]
    peer, public = f"{host}:11110", f"{host}:5002"  # cluster.grpc_port, grpc.port
    with grpc.insecure_channel(peer) as channel:
        users = api_pb2_grpc.UsersStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            users.SetToken(request, timeout=5, metadata=BEARER)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (secured.endpoints["peer"], secured.endpoints["grpc"]) == (peer, public)
    with grpc.insecure_channel(public) as channel:
        users = api_pb2_grpc.UsersStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), ADMIN_BEARER):
            with pytest.raises(grpc.RpcError) as info:
                users.SetToken(request, timeout=5, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert connack(secured, "grpc-user", "via-grpc") == ReasonCode.AUTH_FAIL
        users.SetToken(request, timeout=5, metadata=BEARER)
        cluster = api_pb2_grpc.ClusterStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            cluster.Status(api_pb2.Empty(), timeout=5, metadata=BEARER)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert cluster.Status(api_pb2.Empty(), timeout=5, metadata=ADMIN_BEARER).node_id == 1
    assert connack(secured, "grpc-user", "via-grpc") == ReasonCode.SUCCESS


# ---- expiry -------------------------------------------------------------------------------------


def test_an_expired_token_gets_connack_reason_2(secured: NodeProcess) -> None:
    api = Api.of(secured)
    api.token("short", "lives-briefly", expire=2)
    api.token("long", "lives-long", expire=3600)
    assert connack(secured, "short", "lives-briefly") == ReasonCode.SUCCESS
    # Wall-clock expiry: nothing to wait on but the clock.
    eventually(
        lambda: connack(secured, "short", "lives-briefly") == ReasonCode.AUTH_FAIL,
        timeout_s=10,
        what="the token to expire",
    )
    assert connack(secured, "long", "lives-long") == ReasonCode.SUCCESS
    # A new token (without expiry) logs in again; a negative expiry is refused.
    api.token("short", "lives-briefly")
    assert connack(secured, "short", "lives-briefly") == ReasonCode.SUCCESS
    resp = api.post("/user/token", {"uid": "short", "token": "x", "expire": -1})
    assert resp.status_code == 400 and "expire" in resp.json()["msg"]
    # The gRPC API takes the same field.
    with grpc.insecure_channel(secured.endpoints["grpc"]) as channel:
        users = api_pb2_grpc.UsersStub(channel)
        request = api_pb2.TokenRequest(uid="grpc-short", token="g", expire=1)
        users.SetToken(request, timeout=5, metadata=BEARER)
    eventually(
        lambda: connack(secured, "grpc-short", "g") == ReasonCode.AUTH_FAIL,
        timeout_s=10,
        what="the gRPC-set token to expire",
    )


# ---- at rest -----------------------------------------------------------------------------------


def files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def test_user_tokens_are_not_in_the_data_directory(tmp_path: Path) -> None:
    """Before: the token sat in plain text in the RocksDB files (and the Raft journal)."""
    node = start_node(tmp_path)
    token = f"tok-{secrets.token_hex(12)}"
    try:
        Api.of(node).token("alice", token)
        assert connack(node, "alice", token) == ReasonCode.SUCCESS
    finally:
        node.stop()
    found = [str(p) for p in files_under(node.data_dir) if token.encode() in p.read_bytes()]
    assert found == []
    assert any(files_under(node.data_dir / "groups"))  # the stores are there


def test_data_directories_are_private(tmp_path: Path) -> None:
    """Before: 755 directories and 644 files, whatever they held."""
    old = os.umask(0o022)  # a common default: the node must not depend on its caller's
    try:
        node = start_node(tmp_path)
    finally:
        os.umask(old)
    try:
        Api.of(node).token("alice", "t")
    finally:
        node.stop()
    open_to_others = [
        f"{p} {oct(p.stat().st_mode & 0o777)}"
        for p in [node.data_dir, *node.data_dir.rglob("*")]
        if not p.is_symlink() and p.stat().st_mode & 0o077
    ]
    assert open_to_others == []
    assert (node.data_dir / "node.secret").stat().st_mode & 0o777 == 0o600


def test_a_lone_nodes_tokens_outlive_a_restart(tmp_path: Path) -> None:
    """A lone node without a password keys its tokens with a secret it keeps."""
    node = start_node(tmp_path)
    try:
        Api.of(node).token("alice", "kept")
        node.stop()
        node.start()
        assert connack(node, "alice", "kept") == ReasonCode.SUCCESS
    finally:
        node.stop()


def test_tokens_survive_a_password_change(tmp_path: Path) -> None:
    """With ``cluster.password_accepted`` a token sealed under the old password logs in and
    is sealed again under the new one, so it still logs in once the old one is dropped."""
    node = start_node(tmp_path, cluster__password="password-one")
    try:
        Api.of(node).token("alice", "t-alice")
        Api.of(node).token("bob", "t-bob")
        node.stop()
        node.env["RAFTCHAT_CLUSTER_PASSWORD"] = "password-two"
        node.env["RAFTCHAT_CLUSTER_PASSWORD_ACCEPTED"] = "password-one"
        node.start()
        assert connack(node, "alice", "t-alice") == ReasonCode.SUCCESS
        eventually(
            lambda: "token re-sealed" in node.log_path.read_text(),
            what="alice's token to be sealed under the new password",
        )
        node.stop()
        del node.env["RAFTCHAT_CLUSTER_PASSWORD_ACCEPTED"]
        node.start()
        assert connack(node, "alice", "t-alice") == ReasonCode.SUCCESS
        # Bob did not log in during the change: his token must be set again.
        assert connack(node, "bob", "t-bob") == ReasonCode.AUTH_FAIL
    finally:
        node.stop()


# ---- the open mode -------------------------------------------------------------------------------


def test_the_open_api_is_a_logged_choice(tmp_path: Path) -> None:
    node = start_node(tmp_path, auth__api_open=True)
    try:
        with bare(node) as http:
            assert http.post("/user/token", json={"uid": "a", "token": "t"}).status_code == 200
    finally:
        node.stop()
    assert "auth.api_open" in node.log_path.read_text()


# ---- the cluster ---------------------------------------------------------------------------------


def test_without_an_admin_token_a_cluster_answers_no_cluster_route(tmp_path: Path) -> None:
    """Safe by default. (Before the module's cluster starts: one test cluster at a time.)"""
    c = Cluster(tmp_path, 2, auth__admin_token="")
    c.start()
    try:
        api = c.api(1)
        for resp in (
            api.http.get("/cluster/status"),
            api.post("/cluster/join", {"node_id": 9, "host": "127.0.0.254"}),
            api.post("/cluster/leave", {"node_id": 2, "force": 1}),
        ):
            assert resp.status_code == 403
            assert "auth.admin_token" in resp.json()["msg"]
        assert api.http.get("/health").status_code == 200
    finally:
        c.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path_factory.mktemp("cluster"),
        3,
        auth__api_token=API,
        auth__admin_token=ADMIN,
        log__level="debug",
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


def cluster_map(c: Cluster) -> dict[str, Any]:
    status = c.api(1).http.get("/cluster/status").json()
    return {"version": status["placement_version"], "nodes": status["nodes"]}


def test_cluster_changes_need_the_admin_token(cluster: Cluster) -> None:
    """Before: three POSTs without a credential admitted a made-up node 9 and took the cluster
    below its replica count."""
    before = cluster_map(cluster)
    url = f"http://{cluster.hosts[2]}:5001"
    with httpx.Client(base_url=url, timeout=10.0) as http:
        for headers in ({}, {"token": API}, {"token": "wrong"}, {"Authorization": f"Bearer {API}"}):
            join = {"node_id": 9, "host": "127.0.0.254"}
            assert http.post("/cluster/join", json=join, headers=headers).status_code == 401
            leave = {"node_id": 3, "force": 1}
            assert http.post("/cluster/leave", json=leave, headers=headers).status_code == 401
            assert http.get("/cluster/status", headers=headers).status_code == 401
    with grpc.insecure_channel(f"{cluster.hosts[3]}:5002") as channel:
        stub = api_pb2_grpc.ClusterStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Leave(api_pb2.LeaveRequest(node_id=1, force=True), timeout=5, metadata=BEARER)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert cluster_map(cluster) == before


def test_no_secret_reaches_a_log(cluster: Cluster) -> None:
    """Every secret of a run, and every wrong one presented, is absent from every node log
    (the node logs at debug level here)."""
    user_token, grpc_token = f"ut-{secrets.token_hex(8)}", f"gt-{secrets.token_hex(8)}"
    wrong = {k: f"{k}-{secrets.token_hex(8)}" for k in ("login", "api", "admin", "bearer")}
    node1 = cluster.nodes[1]
    api = cluster.api(1)
    api.token("alice", user_token)
    with grpc.insecure_channel(f"{cluster.hosts[2]}:5002") as channel:
        users = api_pb2_grpc.UsersStub(channel)
        users.SetToken(api_pb2.TokenRequest(uid="bob", token=grpc_token), metadata=BEARER)
        with pytest.raises(grpc.RpcError):
            users.SetToken(
                api_pb2.TokenRequest(uid="bob", token="x"),
                metadata=(("authorization", f"Bearer {wrong['bearer']}"),),
            )
    assert connack(node1, "alice", user_token) == ReasonCode.SUCCESS
    assert connack(node1, "bob", grpc_token) == ReasonCode.SUCCESS
    assert connack(node1, "alice", wrong["login"]) == ReasonCode.AUTH_FAIL
    api.token("carol", "short-lived", expire=1)
    eventually(lambda: connack(node1, "carol", "short-lived") == ReasonCode.AUTH_FAIL)
    with httpx.Client(base_url=f"http://{cluster.hosts[3]}:5001", timeout=10.0) as http:
        resp = http.post("/message/send", json={}, headers={"token": wrong["api"]})
        assert resp.status_code == 401 and wrong["api"] not in resp.text
        resp = http.get("/cluster/status", headers={"token": wrong["admin"]})
        assert resp.status_code == 401 and wrong["admin"] not in resp.text
        # A token in a field that fails its check is not echoed either.
        resp = http.post(
            "/user/token", json={"uid": "a@b", "token": user_token}, headers={"token": API}
        )
        assert resp.status_code == 400 and user_token not in resp.text
    password = "test-cluster-secret"  # tests/conftest.py's Cluster
    secret_values = [
        user_token,
        grpc_token,
        "short-lived",
        API,
        ADMIN,
        password,
        peer_key(password).hex(),  # the peer calls' MAC key
        *wrong.values(),
    ]
    logs = {i: p.log_path.read_text() for i, p in cluster.nodes.items()}
    assert all("CONNECT refused" in text or i != 1 for i, text in logs.items())
    leaks = [(i, s) for i, text in logs.items() for s in secret_values if s in text]
    assert leaks == []


def test_a_gateway_without_token_checks_says_so_at_every_start(tmp_path: Path) -> None:
    node = start_node(tmp_path, auth__token_auth=False)
    try:
        assert connack(node, "anyone", "any-token") == ReasonCode.SUCCESS
        assert "auth.token_auth = false" in node.log_path.read_text()
    finally:
        node.stop()
