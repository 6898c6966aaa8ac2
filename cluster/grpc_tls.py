"""gRPC credentials from PEM bytes, for ``bridge.GrpcServer`` and ``bridge.GrpcClient``.

grpcio's server credentials either do not ask for a client certificate or require one: it has
no "ask, verify if given" mode. So a server is TLS for anyone (``server_credentials`` without a
CA) or mutual TLS (with one), and a port serves one or the other.

Peers connect by address (``cluster.nodes`` lists IPs), and grpc checks the address against the
certificate's subjectAltName: node certificates need an IP SAN for ``node.host``.
"""

from __future__ import annotations

import grpc


def server_credentials(
    cert_chain: bytes, key: bytes, client_ca: bytes | None = None
) -> grpc.ServerCredentials:
    """TLS with this certificate; with ``client_ca``, every client must present a certificate
    issued by it (mutual TLS), or the handshake fails."""
    return grpc.ssl_server_credentials(
        [(key, cert_chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(
    ca: bytes | None, cert_chain: bytes | None = None, key: bytes | None = None
) -> grpc.ChannelCredentials:
    """A client that trusts ``ca`` (None: the system's roots) and, with ``cert_chain`` and
    ``key``, presents that certificate when the server asks for one."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert_chain
    )
