"""Kafka output: the record layout (``encode``), the sender thread (``sender``), the IO-thread
side of writing (``client``) and the one module that touches kafka-python's internals
(``compat``). Import the module you need; importing this package loads nothing heavy."""

from __future__ import annotations

__all__: list[str] = []
