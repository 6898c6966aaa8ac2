"""Client gateway: WKProto sessions over TCP and WebSocket."""
