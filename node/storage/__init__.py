"""RocksDB storage of one node: message logs per channel, channels, subscribers, users, dedupe."""

from .db import Store
from .records import ChannelInfo, DeviceRecord, MessageRecord

__all__ = ["ChannelInfo", "DeviceRecord", "MessageRecord", "Store"]
