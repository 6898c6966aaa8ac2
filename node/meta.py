"""Durable metadata writes (users' device tokens, channels, subscribers).

Each call is one RocksDB write made durable by a WAL fsync in a worker thread before it returns.
The cluster issue turns these into replicated commands; callers do not change.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .storage import ChannelInfo, DeviceRecord, Store
from .storage.db import Batch


class MetaWriter:
    def __init__(self, store: Store) -> None:
        self._store = store
        # Metadata writes are rare; one at a time keeps read-modify-write steps atomic.
        self._lock = trio.Lock()

    async def _commit(self, build: Callable[[Batch], None]) -> None:
        async with self._lock:
            wb = self._store.batch()
            build(wb)
            self._store.write(wb)
            await trio.to_thread.run_sync(self._store.flush_wal)

    async def set_device(self, uid: str, device_flag: int, record: DeviceRecord) -> None:
        await self._commit(lambda wb: wb.put_device(uid, device_flag, record))

    async def put_channel(
        self,
        info: ChannelInfo,
        add: list[str] | None = None,
        remove: list[str] | None = None,
    ) -> None:
        def build(wb: Batch) -> None:
            wb.put_channel(info)
            if remove:
                wb.remove_subscribers(info.channel_type, info.channel_id, remove)
            if add:
                wb.add_subscribers(info.channel_type, info.channel_id, add)

        await self._commit(build)
