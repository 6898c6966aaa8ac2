"""``raftchat fuzz``: a live fuzzer. Mutated and random input goes into every listener of a real
local cluster (WKProto over TCP and WebSocket, HTTP, Raft, gRPC) while the chaos suite's chat
workload keeps sending and receiving, and the chaos checkers then count lost and duplicated
acknowledged messages. See docs/fuzz.md.

Modules: ``mutate`` (generic byte mutators), ``scenario`` (the sans-IO steps a generator yields),
one generator module per target (``wk``, ``ws``, ``http``, ``raft``, ``grpc``), ``safety``
(what the fuzzer must never send: the workload's ids, destructive calls that would parse),
``executor`` and ``worker`` (the process that sends), ``watch`` (crashes, restarts, memory,
stalls) and ``runner`` (the command).
"""
