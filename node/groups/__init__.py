"""Slot groups on this node: the replicated state machine, its pipeline and its reads."""
