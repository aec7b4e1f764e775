"""What only PostgreSQL has, for the per-message path of several replicas on one database.

SQLite is a local file: its calls run on the event loop itself (see
:func:`~mailsift.service.db.nowait_first`). PostgreSQL is a network round trip: the
synchronous engine would put every call in a thread. Here instead:

* :mod:`.pool`: a small pool of psycopg async connections per worker, used on the loop;
* :mod:`.notify`: one LISTEN connection per worker, which pushes training-log appends
  and token revocations to every replica, and reconnects by itself;
* :mod:`.admission`: a sender's limit check and count as one statement.
"""
