"""HTTP plumbing: listeners, the bounded protocol, request limits, body reading.

Everything between the socket and a router lives here, so a change to how
requests are accepted, bounded or balanced across workers has one room.
"""
