"""Which HTTP route answers each unary RPC of ``raftchat.v1``.

Every RPC is one (method, path) of the HTTP API: the request message, as JSON (``convert``),
is the route's body (or query string for GET), and the route's answer fills the reply message.
``body`` and ``answer`` adapt the few routes whose documents are not plain objects (a bare
list) or that an RPC uses in a narrower way (one message by seq).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..http.server import ApiError, bad_request

Json = dict[str, Any]


@dataclass(frozen=True)
class Rpc:
    method: str
    path: str
    body: Callable[[Json], Any] | None = None
    """The HTTP body (or query) from the request's JSON; default: the JSON itself."""
    answer: Callable[[Any], Json] | None = None
    """The reply's JSON from the route's answer; default: the answer itself."""


def _wrap(name: str) -> Callable[[Any], Json]:
    """A route answering a bare JSON list: the reply's one repeated field."""
    return lambda answer: {name: answer}


def _seq_window(request: Json) -> Json:
    """GetBySeq as a sync of the one-seq window [seq, seq + 1) upwards."""
    seq = request.pop("message_seq", 0)
    if not seq:
        raise bad_request("message_seq is required")
    return {**request, "start_message_seq": seq, "end_message_seq": seq + 1, "pull_mode": 1}


def _the_message(answer: Any) -> Json:
    messages = answer.get("messages") or []
    if not messages:
        raise ApiError(404, "no message at that seq (or the reader does not see it)")
    first: Json = messages[0]
    return first


def _no_subscribers(request: Json) -> Json:
    if request.get("subscribers") or "reset" in request:
        raise bad_request("subscribers and reset are for Create and AddSubscribers, not Update")
    return request


def _list_rpcs(kind: str, http_name: str) -> dict[str, Rpc]:
    """The deny ("blacklist") or allow ("whitelist") list routes of a channel."""
    base = f"/channel/{http_name}"
    return {
        f"AddTo{kind}List": Rpc("POST", f"{base}_add"),
        f"Set{kind}List": Rpc("POST", f"{base}_set"),
        f"RemoveFrom{kind}List": Rpc("POST", f"{base}_remove"),
        f"Clear{kind}List": Rpc("POST", f"{base}_remove_all"),
        f"Get{kind}List": Rpc("GET", base, answer=_wrap("uids")),
    }


RPCS: dict[str, dict[str, Rpc]] = {
    "Messages": {
        "Send": Rpc("POST", "/message/send"),
        "SendBatch": Rpc("POST", "/message/sendbatch"),
        "Import": Rpc("POST", "/message/import"),
        "GetBySeq": Rpc("POST", "/channel/messagesync", body=_seq_window, answer=_the_message),
        "GetById": Rpc("POST", "/message"),
        "GetByIds": Rpc("POST", "/messages", answer=_wrap("messages")),
        "GetByClientMsgNo": Rpc("GET", "/message/byclientmsgno"),
        "Sync": Rpc("POST", "/channel/messagesync"),
        "GetMaxSeq": Rpc("GET", "/channel/max_message_seq"),
        "Revoke": Rpc("POST", "/message/revoke"),
        "Edit": Rpc("POST", "/message/edit"),
        "DeleteForUser": Rpc("POST", "/message/delete"),
    },
    "Channels": {
        "Create": Rpc("POST", "/channel"),
        "Update": Rpc("POST", "/channel/info", body=_no_subscribers),
        "GetInfo": Rpc("GET", "/channel/info"),
        "Delete": Rpc("POST", "/channel/delete"),
        "AddSubscribers": Rpc("POST", "/channel/subscriber_add"),
        "RemoveSubscribers": Rpc("POST", "/channel/subscriber_remove"),
        "RemoveAllSubscribers": Rpc("POST", "/channel/subscriber_remove_all"),
        "GetSubscribers": Rpc("GET", "/channel/subscribers", answer=_wrap("uids")),
        **_list_rpcs("Deny", "blacklist"),
        **_list_rpcs("Allow", "whitelist"),
    },
    "Users": {
        "SetToken": Rpc("POST", "/user/token"),
        "DeviceQuit": Rpc("POST", "/user/device_quit"),
        # The route's body is the bare list of uids, its answer a bare list of entries.
        "OnlineStatus": Rpc(
            "POST",
            "/user/onlinestatus",
            body=lambda request: request.get("uids", []),
            answer=_wrap("entries"),
        ),
    },
    "Conversations": {
        "Sync": Rpc("POST", "/conversation/sync", answer=_wrap("conversations")),
        "SetUnread": Rpc("POST", "/conversations/setUnread"),
        "ClearUnread": Rpc("POST", "/conversations/clearUnread"),
        "Delete": Rpc("POST", "/conversations/delete"),
    },
    "Cluster": {
        "Status": Rpc("GET", "/cluster/status"),
        "Join": Rpc("POST", "/cluster/join"),
        "Leave": Rpc("POST", "/cluster/leave"),
    },
}
"""Service -> RPC -> route. ``Messages.Subscribe`` is the one RPC not here (``subscribe.py``)."""
