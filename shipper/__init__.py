"""shipper: tail log files into Apache Kafka, at-most-once, with every loss counted."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
