"""Connectors: how the gateway reaches one kind of external system."""
