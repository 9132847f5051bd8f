"""Helpers for bench/run.py: data, broker, programs, scenarios and reports."""
