"""College and council meetings: agenda items, decisions and their numbers, meeting closure.

``configuration`` reads the tenant file's meeting block, ``domain`` holds the
rules, ``tables`` the storage, ``agenda`` the use cases (one transaction
each, with their events staged in the outbox), ``api`` the REST entry points,
``ws4pm`` the SOAP facade compatible with IMIO's WS4PM clients,
``urban_requests`` the handlers of other services' item requests, and
``main`` wires them into one process.
"""
