"""Raft replication of opaque commands on pysyncobj, driven by one thread per node."""
