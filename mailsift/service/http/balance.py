"""Connections spread evenly over the workers: one shared socket, the least-loaded accepts.

A gateway holds a few keep-alive connections for hours, so the worker that accepts each
one carries its load for as long. Two usual ways of sharing a port both leave that to
chance:

* a socket per worker with ``SO_REUSEPORT``: the kernel picks the worker by a hash of
  the client's address and port. Over four starts of ``mailsift bench`` (16
  connections) the splits were 6/10, 8/8, 5/11 and 6/10, and the worker with 10
  answered in a p50 of 43 ms against the other's 28 ms: the busier worker sets the p99;
* one socket that every worker accepts from, as uvloop does it: the first worker to
  wake takes every connection waiting (16/0, 14/2, 15/1).

Here every worker accepts from one shared socket in its own loop, one connection at a
time, and publishes how many it holds on a :class:`LoadBoard`. Before each accept a
worker holding more than the least-loaded other waits its turn, for at most
``MAX_WAIT``, so a stuck or busy sibling cannot stop it accepting. A worker idle while
the other works therefore takes the next connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import socket
import ssl as ssl_module
import struct
import tempfile
from collections.abc import Callable, Iterator
from multiprocessing import reduction
from pathlib import Path
from typing import Any

import uvloop

__all__ = ["BalancingLoop", "LoadBoard", "SharedListener", "shared_listener"]

SLOTS = 64
"""Workers a board has room for; more than any one machine runs."""
MAX_WAIT = 0.010
"""Longest a worker defers to a less-loaded sibling before accepting anyway."""
_TURN = 0.001
_SLOT = struct.Struct("=qq")  # worker pid, connections it holds
BOARD_PREFIX = "mailsift-load-"
"""Board files are named ``<prefix><supervisor pid>-<random>``: a killed run's is known by
its pid (:mod:`mailsift.service.leftovers` removes it)."""


def board_directory() -> str:
    """Where boards are made: shared memory when there is some."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class LoadBoard:
    """How many connections each worker holds: a slot each in a small shared file.

    Each worker writes only its own slot; a slot whose process has gone is free again,
    so a replacement worker takes the place of the one that died.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        self._map = mmap.mmap(self._fd, SLOTS * _SLOT.size)
        self._slot: int | None = None

    @classmethod
    def create(cls) -> str:
        """A new, empty board file; the supervisor removes it when it exits."""
        fd, path = tempfile.mkstemp(prefix=f"{BOARD_PREFIX}{os.getpid()}-", dir=board_directory())
        os.write(fd, bytes(SLOTS * _SLOT.size))
        os.close(fd)
        return path

    def claim(self) -> None:
        """Take a free slot for this process (under a lock: workers start together)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for i in range(SLOTS):
                pid, _ = _SLOT.unpack_from(self._map, i * _SLOT.size)
                if pid == 0 or not _alive(pid):
                    _SLOT.pack_into(self._map, i * _SLOT.size, os.getpid(), 0)
                    self._slot = i
                    return
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def publish(self, held: int) -> None:
        if self._slot is not None:
            _SLOT.pack_into(self._map, self._slot * _SLOT.size, os.getpid(), held)

    def least_other(self) -> int | None:
        """The fewest connections any other live worker holds; None when alone."""
        loads = [held for slot, pid, held in self._slots() if slot != self._slot and _alive(pid)]
        return min(loads, default=None)

    def _slots(self) -> Iterator[tuple[int, int, int]]:
        for i in range(SLOTS):
            pid, held = _SLOT.unpack_from(self._map, i * _SLOT.size)
            if pid:
                yield i, pid, held


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedListener(socket.socket):
    """A listening socket every worker accepts from, with the board they balance on.

    Pickled into a worker (how the supervisor hands sockets over), it arrives as the same
    socket, duplicated, so that :class:`BalancingLoop` knows to balance it.
    """

    board_path = ""

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        duplicate = reduction.DupFd(self.fileno())
        fields = (duplicate, int(self.family), int(self.type), self.proto, self.board_path)
        return (_rebuild, fields)


def _rebuild(duplicate: Any, family: int, type_: int, proto: int, board: str) -> SharedListener:
    sock = SharedListener(family, type_, proto, fileno=duplicate.detach())
    sock.board_path = board
    return sock


@contextlib.contextmanager
def shared_listener(host: str, port: int) -> Iterator[SharedListener]:
    """A bound :class:`SharedListener` and its board, removed on exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = SharedListener(family, socket.SOCK_STREAM)
    sock.board_path = LoadBoard.create()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        yield sock
    finally:
        sock.close()
        Path(sock.board_path).unlink(missing_ok=True)


class _BalancedServer(asyncio.AbstractServer):
    """Accepts from a :class:`SharedListener` by turns (see the module doc)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: SharedListener,
        ssl: ssl_module.SSLContext | None,
        backlog: int,
    ) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._sock = sock
        self._ssl = ssl
        self._board = LoadBoard(sock.board_path)
        self._board.claim()
        self._transports: set[asyncio.BaseTransport] = set()
        self._starting: set[asyncio.Task[None]] = set()
        sock.setblocking(False)
        sock.listen(backlog)
        self._accepting = loop.create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        while True:
            await self._wait_turn()
            try:
                conn, _ = await self._loop.sock_accept(self._sock)
            except (ConnectionAbortedError, InterruptedError):
                continue  # the client gave up while queued: nothing to serve
            except OSError:  # out of descriptors, say: wait rather than spin
                await asyncio.sleep(0.1)
                continue
            # The TLS handshake (if any) runs in its own task: a client that stalls in it
            # must not stall the accepting of everyone else.
            task = self._loop.create_task(self._start(conn))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)
            self._held()

    async def _wait_turn(self) -> None:
        """Defer to a sibling holding fewer connections, for at most ``MAX_WAIT``."""
        deadline = self._loop.time() + MAX_WAIT
        while self._loop.time() < deadline:
            least = self._board.least_other()
            if least is None or self._held() <= least:
                return
            await asyncio.sleep(_TURN)

    async def _start(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            transport, _ = await self._loop.connect_accepted_socket(
                self._protocol_factory, conn, ssl=self._ssl
            )
        except (OSError, ssl_module.SSLError, TimeoutError):
            conn.close()  # a failed handshake or a vanished client: it was never served
            return
        self._transports.add(transport)

    def _held(self) -> int:
        """Connections this worker holds (open or being set up), published on the board."""
        self._transports = {t for t in self._transports if not t.is_closing()}
        held = len(self._transports) + len(self._starting)
        self._board.publish(held)
        return held

    # -- asyncio.AbstractServer ------------------------------------------------------

    def close(self) -> None:
        self._accepting.cancel()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._accepting.done()

    async def start_serving(self) -> None:
        return None  # it serves from creation

    async def serve_forever(self) -> None:
        await asyncio.shield(self._accepting)

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, return_exceptions=True)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)


class BalancingLoop(uvloop.Loop):
    """uvloop, except that a server on a :class:`SharedListener` accepts by turns.

    uvicorn's ``loop=`` takes an import string of a loop factory: this class.
    """

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        *,
        sock: socket.socket | None = None,
        ssl: ssl_module.SSLContext | None = None,
        backlog: int = 100,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        if isinstance(sock, SharedListener):
            return _BalancedServer(self, protocol_factory, sock, ssl, backlog)
        return await super().create_server(
            protocol_factory, host, port, sock=sock, ssl=ssl, backlog=backlog, **kwargs
        )
