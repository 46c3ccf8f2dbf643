"""The hub's contracts: the event envelope, every event type, and the external contracts."""
