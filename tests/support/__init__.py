"""Helpers the tests, the demo and the benchmarks share: reading back a topic, waiting, and
a proxy that puts faults between the shipper and the broker."""
