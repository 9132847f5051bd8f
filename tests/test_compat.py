"""The kafka-python internals the sender relies on are where ``compat`` reads them."""

from __future__ import annotations

from shipper.kafka import compat


def test_every_internal_we_use_is_still_there() -> None:
    """An upgrade of kafka-python that moves an internal fails here, by name, not in use."""
    compat.check()


def test_produce_request_is_acks_zero_with_our_batch() -> None:
    """The request we build is acks=0 and carries the encoded batch untouched."""
    req = compat.produce_request("logs", 3, b"records")
    assert req.acks == 0
    (topic,) = req.topic_data
    assert topic.name == "logs"
    (part,) = topic.partition_data
    assert (part.index, part.records) == (3, b"records")
