"""Every ```python block of docs/client.md runs, as its own script, against a real node.

The examples read the node's addresses from RAFTCHAT_HTTP, RAFTCHAT_TCP and RAFTCHAT_GRPC, and
its API token from RAFTCHAT_AUTH_API_TOKEN, and assert their own results; an example that
raises (or asserts wrongly) fails its test. They share one node, in document order, so each
uses its own uids and channels. The TLS examples (those that read RAFTCHAT_CA_FILE) run against
a node with certificates, in ``tests/integration/test_tls.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.devcluster import NodeProcess
from tests.conftest import start_node

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "client.md"
DOC_TOKEN = "client-docs-api-token"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def examples(tls: bool = False) -> list[str]:
    return [b for b in BLOCK.findall(DOC.read_text()) if ("RAFTCHAT_CA_FILE" in b) is tls]


def test_the_document_has_examples_of_every_part() -> None:
    code = "\n".join(examples())
    for name in (
        "SyncHttpClient",
        "HttpClient",
        "open_client",
        "open_session",
        "connect_sync",
        "SyncGrpcClient",
        "GrpcClient",
    ):
        assert re.search(rf"\b{name}\(", code), f"no example uses {name}"


@pytest.fixture(scope="module")
def doc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = start_node(tmp_path_factory.mktemp("client-docs"), auth__api_token=DOC_TOKEN)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("index", range(len(examples())))
def test_example_runs(index: int, doc_node: NodeProcess) -> None:
    code = examples()[index]
    env = {
        **os.environ,
        "RAFTCHAT_HTTP": doc_node.endpoints["http"],
        "RAFTCHAT_TCP": doc_node.endpoints["tcp"],
        "RAFTCHAT_GRPC": doc_node.endpoints["grpc"],
        "RAFTCHAT_AUTH_API_TOKEN": DOC_TOKEN,
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    first_line = code.strip().splitlines()[0]
    assert done.returncode == 0, f"example {index} ({first_line}...) failed:\n{done.stderr}"
