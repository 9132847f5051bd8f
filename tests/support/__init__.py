"""Helpers the tests share: things that sit between the shipper and what it talks to."""
