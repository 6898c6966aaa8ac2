"""Wire formats of raftchat, free of IO: WKProto frames and crypto, and the gRPC .proto files."""
