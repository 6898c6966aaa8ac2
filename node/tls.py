"""The node's certificate files (``[tls]``), read and checked once at start-up.

A file that is missing, unreadable, not PEM, an encrypted key, a key that is not the
certificate's, a certificate outside its validity dates, or (with ``tls.ca_file``) one that the
CA did not issue or that does not name ``node.host`` stops the node before it opens anything:
one line naming the setting and the path, exit code 2 (``node/startup.py``). Every listener then
builds its TLS from the same bytes: an ``ssl.SSLContext`` for WSS and HTTPS (trio), gRPC
credentials for the gRPC ports. Rotating a certificate is a restart of the node.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from .config import Config
from .startup import refused

if TYPE_CHECKING:
    import grpc


@dataclass(frozen=True)
class NodeTls:
    """The checked PEM bytes of ``[tls]``."""

    cert_file: str
    key_file: str
    cert_chain: bytes
    key: bytes
    ca_file: str = ""
    ca: bytes | None = None
    warnings: list[str] = field(default_factory=list)
    """Things worth a log line at start (a key file others may read)."""

    def server_context(self) -> ssl.SSLContext:
        """For WSS and HTTPS: TLS 1.2 or later, no client certificate asked for."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        ctx.set_alpn_protocols(["http/1.1"])  # both speak HTTP/1.1 (WebSocket: its upgrade)
        return ctx

    def public_grpc_credentials(self) -> grpc.ServerCredentials:
        """A gRPC port for clients: TLS, no client certificate."""
        from cluster.grpc_tls import server_credentials

        return server_credentials(self.cert_chain, self.key)

    def peer_server_credentials(self) -> grpc.ServerCredentials | None:
        """The peer gRPC port: mutual TLS with ``tls.ca_file``; None (plain) without."""
        from cluster.grpc_tls import server_credentials

        return None if self.ca is None else server_credentials(self.cert_chain, self.key, self.ca)

    def peer_channel_credentials(self) -> grpc.ChannelCredentials | None:
        """How this node calls its peers: trusting ``tls.ca_file`` and presenting its own
        certificate; None (plain) without a CA."""
        from cluster.grpc_tls import channel_credentials

        return None if self.ca is None else channel_credentials(self.ca, self.cert_chain, self.key)


def load_tls(config: Config) -> NodeTls | None:
    """``[tls]`` read and checked; None when no certificate is configured. Raises a refusal
    (``StartupError``, exit 2) naming the setting and the path of whatever is wrong."""
    t = config.tls
    if not t.cert_file:
        return None
    cert_chain = _read("tls.cert_file", t.cert_file)
    key_pem = _read("tls.key_file", t.key_file)
    chain = _certificates("tls.cert_file", t.cert_file, cert_chain)
    leaf = chain[0]
    key = _private_key(t.key_file, key_pem)
    if _public(key) != leaf.public_key().public_bytes(*_SPKI):
        raise refused(
            f"tls.key_file {t.key_file} is not the key of the certificate in "
            f"tls.cert_file {t.cert_file}"
        )
    _check_dates(t.cert_file, leaf)
    ca: bytes | None = None
    if t.ca_file:
        ca = _read("tls.ca_file", t.ca_file)
        authorities = _certificates("tls.ca_file", t.ca_file, ca)
        if not _issued_by(chain, authorities):
            raise refused(
                f"tls.cert_file {t.cert_file} was not issued by a certificate of tls.ca_file "
                f"{t.ca_file}: peers, which trust that CA, would refuse it"
            )
        if not _names(leaf, config.node.host):
            raise refused(
                f"tls.cert_file {t.cert_file} does not name node.host {config.node.host} in its "
                "subjectAltName: peers connect to that address and would refuse the "
                "certificate (give it an IP SAN for the address)"
            )
    tls = NodeTls(
        t.cert_file, t.key_file, cert_chain, key_pem, t.ca_file, ca, _warnings(t.key_file)
    )
    try:
        tls.server_context()  # what Python's ssl makes of the same files
    except (ssl.SSLError, ValueError) as e:
        raise refused(
            f"tls.cert_file {t.cert_file} / tls.key_file {t.key_file}: not usable for TLS: {e}"
        ) from None
    return tls


_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise refused(f"{setting} {path}: cannot read it: {e.strerror or e}") from None


def _certificates(setting: str, path: str, pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise refused(f"{setting} {path}: not a PEM certificate") from None


def _private_key(path: str, pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # "Password was not given but private key is encrypted"
        raise refused(
            f"tls.key_file {path}: the key is encrypted; the node needs it unencrypted "
            "(protect the file with its permissions, 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise refused(f"tls.key_file {path}: not a PEM private key") from None


def _public(key: PrivateKeyTypes) -> bytes:
    public = key.public_key()
    return public.public_bytes(*_SPKI)


def _check_dates(path: str, cert: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        raise refused(
            f"tls.cert_file {path}: the certificate expired at "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now < cert.not_valid_before_utc:
        raise refused(
            f"tls.cert_file {path}: the certificate is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC (is this machine's clock right?)"
        )


def _issued_by(chain: list[x509.Certificate], authorities: list[x509.Certificate]) -> bool:
    """Whether some certificate of the chain is one of ``authorities`` or signed by one: the
    chain itself (leaf, intermediates) is what the node presents."""
    for cert in chain:
        for ca in authorities:
            if cert == ca:
                return True
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
    return False


def _names(cert: x509.Certificate, host: str) -> bool:
    """Whether ``host`` (an address or a name) is among the certificate's subjectAltNames."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in (d.lower() for d in sans.get_values_for_type(x509.DNSName))
    return address in sans.get_values_for_type(x509.IPAddress)


def _warnings(key_file: str) -> list[str]:
    try:
        mode = os.stat(key_file).st_mode
    except OSError:
        return []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"tls.key_file {key_file} may be read by other users (mode {mode & 0o777:o})"]
    return []
