"""The producers' partitioner: aiokafka's (the Java client's) partition for every key, faster."""

from __future__ import annotations

import os
import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from crm_platform.kafka import make_producer, murmur2, partition_for


def test_murmur2_is_aiokafkas_for_keys_of_every_length() -> None:
    keys = [os.urandom(n % 67) for n in range(5000)] + [b"", b"\xff" * 7, b"lead-1", b"\x00\x80\xff"]
    keys += [str(i).encode() for i in range(2000)]
    assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]


def test_a_keys_partition_is_the_default_partitioners() -> None:
    default = DefaultPartitioner()
    for n in (1, 3, 6, 12, 100):
        partitions = list(range(n))
        for key in (os.urandom(36) for _ in range(1000)):
            assert partition_for(key, partitions, partitions) == default(key, partitions, partitions)
    random.seed(1)
    assert partition_for(None, [0, 1, 2], [2]) == 2, "no key: an available partition"


async def test_every_producer_the_platform_makes_uses_it() -> None:
    producer = make_producer("127.0.0.1:9", "partitioner-test")
    assert producer._partitioner is partition_for
