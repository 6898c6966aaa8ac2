"""The public gRPC API (``proto/raftchat/v1/api.proto``): a typed adapter over the HTTP API's
handlers, plus the ``Subscribe`` stream. See ``docs/grpc.md`` and ADR 008."""
