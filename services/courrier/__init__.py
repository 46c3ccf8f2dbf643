"""The mail registry (courrier): incoming mail, scanner intake and outgoing mail to the e-Box.

``domain`` holds the rules, ``tables`` the storage, ``registry`` the use cases
(one transaction each, with their events staged in the outbox), ``api`` and
``intake`` the REST entry points, ``receipts`` the handlers of the gateway's
delivery receipts, and ``main`` wires them into one process.
"""
