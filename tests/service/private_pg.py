"""A private PostgreSQL cluster on a free port, for tests that stop and start the
database: the machine's shared one serves other programs and must never be stopped.

``initdb`` and ``pg_ctl`` come from /usr/lib/postgresql/*/bin (Debian's layout) or PATH.
PostgreSQL refuses to run as root, so under root the cluster belongs to the
``postgres`` system user (``runuser``); its directory is a fresh one under /tmp.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.service.server import free_port

__all__ = ["PrivateCluster", "find_bin", "owned_by_postgres"]


def owned_by_postgres(*paths: Path) -> list[str]:
    """PostgreSQL's programs refuse to run as root: under root, hand ``paths`` to the
    ``postgres`` system user and return the prefix that runs a command as it (``[]``
    when not root)."""
    if os.geteuid() != 0:
        return []
    owner = pwd.getpwnam("postgres")
    for path in paths:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def find_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, newest version first; None if absent."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` in a temporary directory; :meth:`stop` and :meth:`start`
    take the database away and bring it back, as an outage would."""

    def __init__(self, bin_dir: Path, *, max_connections: int = 200) -> None:
        self.bin_dir = bin_dir
        self.max_connections = max_connections
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mailsift-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as = owned_by_postgres(self.root)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self.bin_dir / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c max_connections={self.max_connections}"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: every connection is cut at once, as in a crash (recovery runs
        at the next start; nothing committed is lost)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
