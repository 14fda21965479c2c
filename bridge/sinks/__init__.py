"""Sinks: consumers that land events somewhere else (the warehouse)."""

from bridge.sinks.warehouse import warehouse_app

__all__ = ["warehouse_app"]
