"""``raftchat fuzz``: a live fuzzer. Mutated and random input goes into every listener of a real
local cluster (WKProto over TCP and WebSocket, HTTP, Raft, gRPC) while the chaos suite's chat
workload keeps sending and receiving, and the chaos checkers then count lost and duplicated
acknowledged messages. See docs/fuzz.md.

Modules: ``mutate`` (generic byte mutators), ``scenario`` (the sans-IO steps a generator yields),
``context`` (what generators know of the cluster), one generator module per target (``tcp`` and
``wk`` for WKProto, ``ws``, ``http``, ``raft``, ``rpc`` and ``grpc_calls`` for gRPC), ``safety``
(what the fuzzer must never send: the workload's ids, destructive calls that would parse),
``executor``, ``answers`` and ``worker`` (the process that sends and counts the answers),
``watch`` (crashes, restarts, memory, stalls), ``report`` and ``runner`` (the command).
"""
