from __future__ import annotations

from collections.abc import Iterator

import pytest

from .harness import ClusterModel
from .sim import StorePool


@pytest.fixture(scope="module")
def store_pool() -> Iterator[StorePool]:
    """Real RocksDB stores for the model's replicas, opened once per module."""
    pool = StorePool()
    ClusterModel.pool = pool
    try:
        yield pool
    finally:
        ClusterModel.pool = None
        pool.close()
