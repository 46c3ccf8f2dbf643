"""Simulated external services over real HTTP, for development and tests."""
