"""Sinks: consumers that land events somewhere else (the warehouse)."""

from bridge.sinks.files import FileSink
from bridge.sinks.warehouse import warehouse_app

__all__ = ["FileSink", "warehouse_app"]
