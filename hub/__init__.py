"""The ``hub`` command line: run the hub, mint development tokens, drive demo traffic."""
