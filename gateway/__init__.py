"""The interop gateway: delivers document events through connectors and publishes receipts."""
