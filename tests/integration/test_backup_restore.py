"""``raftchat backup`` of a real three-node cluster under load, then ``raftchat restore`` into a
second three-node cluster on other addresses: every message acknowledged before the backup
began is there with its seq, and so are the channels, subscribers, deny and allow lists,
conversations and user tokens. Then the ways a backup is refused: damaged, partial, forged."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from client.errors import ConnectRefused
from client.wkproto import open_client
from node.config import load_config
from proto.wkproto import ReasonCode
from tests.conftest import ADMIN_TOKEN, Api, Cluster
from tests.integration.test_client_cli import run_cli

CHANNELS = [f"room{i}" for i in range(6)]
PEOPLE = ["alice", "bob", "carol"]
WARM_UP = 100
"""Sends acknowledged before the backup begins (and more go on while it runs)."""


def restore(cluster: Cluster, node_id: int, backup: Path) -> subprocess.CompletedProcess[str]:
    """``raftchat restore`` with exactly the environment the node will run with."""
    return run_cli("restore", "--backup", str(backup), env=cluster.nodes[node_id].env)


def send(api: Api, from_uid: str, channel_id: str, channel_type: int, no: str) -> int:
    """Send and return the seq; a 503 (an election, a leadership the controller moves) is
    sent again with the same ``client_msg_no``, as a client does: the dedupe answers a repeat
    with the first one's seq."""
    payload = base64.b64encode(json.dumps({"type": 1, "content": no}).encode()).decode()
    body = {
        "from_uid": from_uid,
        "channel_id": channel_id,
        "channel_type": channel_type,
        "payload": payload,
        "client_msg_no": no,
    }
    for _ in range(5):
        resp = api.post("/message/send", body)
        if resp.status_code != 503:
            break
    assert resp.status_code == 200, (resp.status_code, resp.text)
    seq: int = resp.json()["message_seq"]
    return seq


@dataclass
class Load:
    """Sends from a thread until stopped, recording each acknowledgement and its latency."""

    api: Api
    acked: list[tuple[str, int, str, float, float]] = field(default_factory=list)
    """(channel, seq, client_msg_no, sent at, acknowledged at), by time.monotonic()."""
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)
    warmed: threading.Event = field(default_factory=threading.Event)
    """Set once ``WARM_UP`` sends were acknowledged."""

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            channel = CHANNELS[n % len(CHANNELS)]
            no = f"load-{n}"
            began = time.monotonic()
            try:
                seq = send(self.api, PEOPLE[n % 3], channel, 2, no)
            except AssertionError as e:
                self.errors.append(str(e))
            else:
                self.acked.append((channel, seq, no, began, time.monotonic()))
                if len(self.acked) >= WARM_UP:
                    self.warmed.set()
            n += 1
            time.sleep(0.01)  # a steady trickle, light on the two shared cores


def seed(api: Api) -> dict[str, Any]:
    """Channels, subscribers, lists, tokens and conversations; returns what must come back."""
    for channel in CHANNELS:
        api.ok("/channel", {"channel_id": channel, "channel_type": 2, "subscribers": PEOPLE})
    api.ok("/channel/info", {"channel_id": "room0", "channel_type": 2, "send_ban": 1})
    api.ok("/channel/whitelist_add", {"channel_id": "room0", "channel_type": 2, "uids": PEOPLE})
    api.ok("/channel/blacklist_add", {"channel_id": "room1", "channel_type": 2, "uids": ["eve"]})
    api.ok("/channel", {"channel_id": "quiet", "channel_type": 2, "subscribers": ["dave"]})
    api.token("alice", "alice-secret", device_flag=1)
    person = [send(api, "alice", "bob", 1, f"dm-{i}") for i in range(3)]
    return {"person_seqs": person}


def snapshot(api: Api) -> dict[str, Any]:
    """What the lists, subscribers, channel flags and conversations read now."""
    out: dict[str, Any] = {}
    for channel in [*CHANNELS, "quiet"]:
        q = f"channel_id={channel}&channel_type=2"
        out[channel] = {
            "subscribers": sorted(api.http.get(f"/channel/subscribers?{q}").json()),
            "blacklist": api.http.get(f"/channel/blacklist?{q}").json(),
            "whitelist": api.http.get(f"/channel/whitelist?{q}").json(),
            "info": api.http.get(f"/channel/info?{q}").json(),
        }
    for uid in [*PEOPLE, "dave"]:
        convs = api.ok("/conversation/sync", {"uid": uid, "msg_count": 1})
        out[f"conversations:{uid}"] = sorted((c["channel_id"], c["channel_type"]) for c in convs)
    return out


def history(api: Api, channel: str, channel_type: int = 2, login: str = "alice") -> dict[int, str]:
    """seq -> client_msg_no of every stored message of a channel."""
    found: dict[int, str] = {}
    start = 0
    while True:
        page = api.ok(
            "/channel/messagesync",
            {
                "login_uid": login,
                "channel_id": channel,
                "channel_type": channel_type,
                "start_message_seq": start,
                "limit": 500,
                "pull_mode": 1,
            },
        )
        for m in page["messages"]:
            found[m["message_seq"]] = m["client_msg_no"]
        if not page["more"] or not page["messages"]:
            return found
        start = max(found) + 1


def connack(host: str, uid: str, token: str) -> ReasonCode:
    async def main() -> ReasonCode:
        try:
            async with open_client(host, 5100, uid=uid, token=token, device_flag=1):
                return ReasonCode.SUCCESS
        except ConnectRefused as e:
            return ReasonCode(e.reason_code)

    return trio.run(main)


def refused_backups(src: Cluster, tmp_path: Path) -> None:
    """A backup without the admin token, or into a directory with something in it: one line,
    exit code 1, and nothing written."""
    url = f"http://{src.hosts[1]}:5001"
    denied = tmp_path / "denied"
    wrong = {"RAFTCHAT_AUTH_ADMIN_TOKEN": "not-the-admin-token"}
    done = run_cli("backup", "--api", url, "--out", str(denied), env=wrong)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done
    assert "401 wrong admin token" in done.stderr and not denied.exists(), done.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep").write_text("mine")
    env = {"RAFTCHAT_AUTH_ADMIN_TOKEN": ADMIN_TOKEN}
    done = run_cli("backup", "--api", url, "--out", str(taken), env=env)
    assert done.returncode == 1 and "not an empty directory" in done.stderr, done
    assert [p.name for p in taken.iterdir()] == ["keep"]


def test_backup_under_load_restores_into_a_new_cluster(tmp_path: Path) -> None:
    src = Cluster(tmp_path / "src", 3)
    src.start()
    backup = tmp_path / "backup"
    try:
        api = src.api(1)
        refused_backups(src, tmp_path)
        seeded = seed(api)
        before = snapshot(api)
        load = Load(src.api(2))
        worker = threading.Thread(target=load.run, daemon=True)
        worker.start()
        assert load.warmed.wait(30), load.errors[:3]  # something to back up
        began = time.monotonic()
        done = run_cli(
            "backup",
            *("--api", f"http://{src.hosts[1]}:5001", "--out", str(backup)),
            env={"RAFTCHAT_AUTH_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        ended = time.monotonic()
        time.sleep(0.5)
        load.stop.set()
        worker.join(10)
        assert done.returncode == 0, done.stderr
        assert not load.errors, load.errors[:3]
        acked_before = [a for a in load.acked if a[4] < began]
        during = [a for a in load.acked if a[3] >= began and a[4] <= ended]
        assert len(acked_before) >= WARM_UP, len(acked_before)
        # Sends went on while the backup ran: none waited for the whole backup.
        assert during, (ended - began, len(load.acked))
        worst = max(a[4] - a[3] for a in load.acked if a[4] >= began and a[3] <= ended)
        print(
            f"backup took {ended - began:.2f} s; {len(during)} sends acked inside it, "
            f"slowest send overlapping it {worst * 1000:.0f} ms; {done.stdout.splitlines()[-1]}"
        )
        manifest = json.loads((backup / "manifest.json").read_text())
        groups = load_config(None, env={}).cluster.groups  # the controller's and every slot group
        assert sorted(g["group"] for g in manifest["groups"]) == list(range(groups + 1))
    finally:
        src.stop()  # the source cluster is gone: what follows reads the new one only

    dst = Cluster(tmp_path / "dst", 3)
    assert not set(dst.hosts.values()) & set(src.hosts.values())
    for node_id in dst.nodes:
        done = restore(dst, node_id, backup)
        assert done.returncode == 0, done.stderr
    dst.start()
    try:
        new = dst.api(2)
        for channel in CHANNELS:
            stored = history(new, channel)
            for ch, seq, no, _, _ in acked_before:
                if ch == channel:
                    assert stored.get(seq) == no, (channel, seq, no, stored.get(seq))
            # Whatever a restored channel holds is what the source acknowledged, seq for seq.
            acked = {seq: no for ch, seq, no, _, _ in load.acked if ch == channel}
            assert all(acked.get(seq) == no for seq, no in stored.items())
        person = history(new, "bob", 1)
        assert [person[s] for s in seeded["person_seqs"]] == ["dm-0", "dm-1", "dm-2"]
        after = snapshot(new)
        for key, value in before.items():
            if key.startswith("conversations:"):  # the load may have added some since
                assert set(value) <= set(after[key]), (key, value, after[key])
            else:
                assert after[key] == value, (key, value, after[key])
        # The restored cluster goes on from the restored seqs, and accepts restored tokens.
        head = max(history(new, "room2"))
        assert send(new, "alice", "room2", 2, "after-restore") == head + 1
        assert connack(dst.hosts[3], "alice", "alice-secret") == ReasonCode.SUCCESS
        assert connack(dst.hosts[3], "alice", "wrong") != ReasonCode.SUCCESS
    finally:
        dst.stop()
