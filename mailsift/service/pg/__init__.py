"""What only PostgreSQL has, for the per-message path of several replicas on one database.

SQLite is a local file: its calls run on the event loop itself (see
:func:`~mailsift.service.db.nowait_first`). PostgreSQL is a network round trip: the
synchronous engine would put every call in a thread. Here instead:

* :mod:`.pool`: a small pool of psycopg async connections per worker, used on the loop;
* :mod:`.notify`: one LISTEN connection per worker, which pushes training-log appends
  and token revocations to every replica, and reconnects by itself;
* :mod:`.link`: the two of them, opened and closed with the worker;
* :mod:`.admission`: a sender's limit check and count as one statement;
* :mod:`.states`: a sender's risk-state change (compare-and-set) as one statement;
* :mod:`.incidents`: raising and resolving an alert incident, one statement each;
* :mod:`.functions`: the PL/pgSQL functions of the two above, installed at start.
"""
