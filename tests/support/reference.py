"""Record batches as kafka-python's own builder writes them: the reference our encoder must
match byte for byte (tests)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

__all__ = ["Record", "decode_batch", "reference_batch"]

#: (timestamp ms, key, value, headers) of one record.
Record = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]


def reference_batch(records: Sequence[Record], compression: int = 0) -> bytes:
    """kafka-python's encoding of ``records`` (offset deltas 0..n-1, non-idempotent), with
    partitionLeaderEpoch set to -1 like ours."""
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (ts, key, value, headers) in enumerate(records):
        assert b.append(i, timestamp=ts, key=key, value=value, headers=headers) is not None
    out = bytes(b.build())
    # kafka-python writes 0, the Java client -1 (NO_PARTITION_LEADER_EPOCH); the broker
    # overwrites it either way and it is outside the CRC. It is the only difference.
    return out[:12] + struct.pack(">i", -1) + out[16:]


def decode_batch(data: bytes) -> list[Record]:
    """The records of one batch as kafka-python's reader sees them (CRC checked)."""
    records = MemoryRecords(data)
    batch = records.next_batch()
    assert isinstance(batch, DefaultRecordBatch)
    assert batch.validate_crc()
    assert records.next_batch() is None
    out: list[Record] = []
    for i, rec in enumerate(batch):
        assert rec.offset == i
        key = None if rec.key is None else bytes(rec.key)
        out.append((rec.timestamp, key, bytes(rec.value), [(k, bytes(v)) for k, v in rec.headers]))
    return out
