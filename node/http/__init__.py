"""The HTTP API (WuKongIM v2 routes) on a small h11 server."""
