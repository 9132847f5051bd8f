"""Helpers the tests, the demo and the benchmarks share: reading back a topic, waiting."""
