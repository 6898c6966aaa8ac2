"""``[tls]``: the settings that go together, and the checks of the files at start-up
(``node/tls.py``): each problem is one refusal (exit code 2) that names the setting and the
path."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from node.config import Config, ConfigError, load_config
from node.startup import EXIT_REFUSED, StartupError
from node.tls import load_tls
from tests.tlsutil import TestCA

HOST = "10.1.2.3"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def config(**tls: str) -> Config:
    env = {"RAFTCHAT_NODE_HOST": HOST, "RAFTCHAT_AUTH_API_TOKEN": "unit-test-api-token"}
    env.update({f"RAFTCHAT_TLS_{k.upper()}": v for k, v in tls.items()})
    return load_config(None, env=env)


def refusal(**tls: str) -> str:
    with pytest.raises(StartupError) as e:
        load_tls(config(**tls))
    assert e.value.code == EXIT_REFUSED
    text = str(e.value)
    assert "\n" not in text
    return text


def test_without_a_certificate_there_is_no_tls() -> None:
    cfg = load_config(None, env={})
    assert (cfg.tls.cert_file, cfg.gateway.wss_port, cfg.http.tls) == ("", 5210, False)
    assert load_tls(cfg) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RAFTCHAT_TLS_CERT_FILE": "c.pem"}, "tls.cert_file and tls.key_file go together"),
        ({"RAFTCHAT_TLS_KEY_FILE": "k.pem"}, "tls.cert_file and tls.key_file go together"),
        ({"RAFTCHAT_TLS_CA_FILE": "ca.pem"}, "tls.ca_file makes peer gRPC mutual TLS"),
        ({"RAFTCHAT_HTTP_TLS": "true"}, "http.tls = true needs tls.cert_file"),
        ({"RAFTCHAT_GATEWAY_WSS_PORT": "70000"}, "gateway.wss_port must be a TCP port"),
    ],
)
def test_settings_that_go_together(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, env=env)


def test_good_files_give_contexts_and_credentials(ca: TestCA) -> None:
    issued = ca.issue("node", ips=[HOST])
    tls = load_tls(
        config(cert_file=str(issued.cert), key_file=str(issued.key), ca_file=str(ca.ca_file))
    )
    assert tls is not None and tls.ca == ca.ca_file.read_bytes()
    assert isinstance(tls.server_context(), ssl.SSLContext)
    assert tls.peer_server_credentials() is not None
    assert tls.peer_channel_credentials() is not None
    assert tls.public_grpc_credentials() is not None
    assert tls.warnings == []
    # without a CA: no mutual TLS between peers, and no need to name the host
    plain = load_tls(config(cert_file=str(issued.cert), key_file=str(issued.key)))
    assert plain is not None
    assert plain.peer_server_credentials() is None and plain.peer_channel_credentials() is None


def test_a_missing_or_unreadable_file_is_named(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue("node", ips=[HOST])
    missing = tmp_path / "nope.pem"
    text = refusal(cert_file=str(missing), key_file=str(issued.key))
    assert text == f"tls.cert_file {missing}: cannot read it: No such file or directory"
    text = refusal(cert_file=str(issued.cert), key_file=str(tmp_path))
    assert text.startswith(f"tls.key_file {tmp_path}: cannot read it:")
    text = refusal(cert_file=str(issued.cert), key_file=str(issued.key), ca_file=str(missing))
    assert text.startswith(f"tls.ca_file {missing}: cannot read it")


def test_files_that_are_not_pem(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue("node", ips=[HOST])
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert refusal(cert_file=str(junk), key_file=str(issued.key)) == (
        f"tls.cert_file {junk}: not a PEM certificate"
    )
    assert refusal(cert_file=str(issued.cert), key_file=str(junk)) == (
        f"tls.key_file {junk}: not a PEM private key"
    )
    # a certificate where the key should be, and the other way round
    assert "not a PEM private key" in refusal(cert_file=str(issued.cert), key_file=str(issued.cert))
    assert "not a PEM certificate" in refusal(cert_file=str(issued.key), key_file=str(issued.key))


def test_a_key_that_is_not_the_certificates(ca: TestCA) -> None:
    one, two = ca.issue("one", ips=[HOST]), ca.issue("two", ips=[HOST])
    assert refusal(cert_file=str(one.cert), key_file=str(two.key)) == (
        f"tls.key_file {two.key} is not the key of the certificate in tls.cert_file {one.cert}"
    )


def test_an_encrypted_key(ca: TestCA) -> None:
    issued = ca.issue("node", ips=[HOST], key_password=b"pw")
    assert "the key is encrypted" in refusal(cert_file=str(issued.cert), key_file=str(issued.key))


def test_an_expired_certificate(ca: TestCA) -> None:
    issued = ca.issue("old", ips=[HOST], days=-1)
    text = refusal(cert_file=str(issued.cert), key_file=str(issued.key))
    assert text.startswith(f"tls.cert_file {issued.cert}: the certificate expired at ")


def test_with_a_ca_the_certificate_must_be_its_and_name_the_host(
    ca: TestCA, tmp_path: Path
) -> None:
    other = TestCA(tmp_path / "other", "another CA")
    foreign = other.issue("foreign", ips=[HOST])
    text = refusal(cert_file=str(foreign.cert), key_file=str(foreign.key), ca_file=str(ca.ca_file))
    assert text.startswith(
        f"tls.cert_file {foreign.cert} was not issued by a certificate of tls.ca_file {ca.ca_file}"
    )
    nameless = ca.issue("nameless", ips=["10.9.9.9"], dns=["node.example"])
    text = refusal(
        cert_file=str(nameless.cert), key_file=str(nameless.key), ca_file=str(ca.ca_file)
    )
    assert text.startswith(
        f"tls.cert_file {nameless.cert} does not name node.host {HOST} in its subjectAltName"
    )
    # the chain may carry the intermediate; the CA file may hold several CAs
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(other.ca_file.read_bytes() + ca.ca_file.read_bytes())
    good = ca.issue("good", ips=[HOST])
    tls = load_tls(config(cert_file=str(good.cert), key_file=str(good.key), ca_file=str(bundle)))
    assert tls is not None


def test_a_key_others_may_read_is_a_warning(ca: TestCA, tmp_path: Path) -> None:
    issued = ca.issue("node", ips=[HOST])
    shared = tmp_path / "shared.key"
    shutil.copy(issued.key, shared)
    shared.chmod(0o644)
    tls = load_tls(config(cert_file=str(issued.cert), key_file=str(shared)))
    assert tls is not None
    assert tls.warnings == [f"tls.key_file {shared} may be read by other users (mode 644)"]
