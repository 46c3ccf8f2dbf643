"""Urban-planning and environmental permit files under the Walloon CoDT.

``configuration`` reads the tenant file's urban block, ``domain`` holds the
rules, ``deadlines`` the legal deadlines (pure), ``tables`` the storage,
``permits`` the use cases (one transaction each, with their events staged in
the outbox), ``consumers`` the handlers of NOTICe notifications, opinions,
receipts and college decisions, ``watcher`` the deadline warnings, ``api`` the
REST entry points, and ``main`` wires them into one process.
"""
