"""factures: Peppol BIS 3.0 / EN 16931 invoices from reception to accounting."""
