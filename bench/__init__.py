"""Benchmarks that drive a local cluster from outside."""
