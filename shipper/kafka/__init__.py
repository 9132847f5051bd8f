"""Kafka output: a fast RecordBatch v2 encoder and a sender that drains the queue with acks=0."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # kafka-python 3.0 reads its protocol schemas with importlib.resources.read_text/open_text
    # (deprecated since Python 3.11) at import: keep that out of logs and -W error runs.
    warnings.filterwarnings("ignore", r".* is deprecated\. Use files", DeprecationWarning)
    import kafka  # noqa: F401

from shipper.kafka.encode import batch_size, encode_batch, split_batches
from shipper.kafka.sender import KafkaSender

__all__ = ["KafkaSender", "batch_size", "encode_batch", "split_batches"]
