"""Inbound adapters: documents the gateway fetches from outside for the hub's services."""
