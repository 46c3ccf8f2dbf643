"""The business services of the hub; each owns its database and speaks through events."""
