"""A private PgBouncer in transaction mode in front of the machine's PostgreSQL, for the
tests of what must work behind one (docs/scale-out.md: the pooler for many replicas).

PgBouncer refuses to run as root, so under root it runs as the ``postgres`` system user
from a fresh directory under /tmp (see :func:`~tests.service.private_pg.owned_by_postgres`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.service.private_pg import owned_by_postgres
from tests.service.server import accepts, free_port, wait_for

__all__ = ["PGBOUNCER", "pgbouncer"]

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@contextlib.contextmanager
def pgbouncer(user: str, database: str, *, pool_size: int = 2) -> Iterator[str]:
    """A URL for ``database`` through a PgBouncer that shares ``pool_size`` server
    connections between its clients a transaction at a time."""
    root = Path(tempfile.mkdtemp(prefix="mailsift-pgbouncer-"))
    port = free_port()
    (root / "users.txt").write_text(f'"{user}" ""\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{database} = host=127.0.0.1 port=5432 dbname={database} user={user}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root}/users.txt\n"
        f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 50\n"
        f"logfile = {root}/pgbouncer.log\n"
    )
    run_as = owned_by_postgres(root, *root.iterdir())
    process = subprocess.Popen(
        [*run_as, PGBOUNCER, str(root / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        up = wait_for(lambda: accepts(port) or process.poll() is not None, timeout=10)
        if not up or process.poll() is not None:
            log = root / "pgbouncer.log"
            raise RuntimeError(
                f"PgBouncer did not start: {log.read_text() if log.exists() else ''}"
            )
        yield f"postgresql://{user}@127.0.0.1:{port}/{database}"
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)
