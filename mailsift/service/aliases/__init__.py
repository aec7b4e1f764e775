"""Temporary addresses: a user's throw-away address for one sender, delivered to them
until it expires; mail to it from anyone else shows who leaked it."""
