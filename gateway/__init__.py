"""The interop gateway: consumes document events, delivers them through connectors, publishes receipts."""
