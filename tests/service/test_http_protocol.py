"""Writes within one event-loop step leave as one send (a response's head and body together)."""

from __future__ import annotations

import asyncio
from typing import Any

from mailsift.service.http.protocol import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    """A transport that keeps each ``write`` it is given, as the socket would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        self.sends.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.1", 25)}.get(name, default)


async def _step() -> None:
    await asyncio.sleep(0)


def test_head_and_body_written_in_one_step_are_one_send() -> None:
    async def run() -> RecordingTransport:
        inner = RecordingTransport()
        outer = CoalescingTransport(inner, asyncio.get_running_loop())
        outer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        outer.write(memoryview(b"{}"))
        assert inner.sends == []  # held until the step ends
        assert outer.get_write_buffer_size() == 40
        await _step()
        outer.write(b"next")
        await _step()
        return inner

    inner = asyncio.run(run())
    assert inner.sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", b"next"]


def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    async def run() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        first, second = CoalescingTransport(closed, loop), CoalescingTransport(aborted, loop)
        first.write(b"HTTP/1.1 431 ...\r\n\r\n{}")
        first.close()
        second.write(b"half a response")
        second.abort()
        await _step()  # the scheduled send finds nothing left to send
        return closed, aborted

    closed, aborted = asyncio.run(run())
    assert closed.sends == [b"HTTP/1.1 431 ...\r\n\r\n{}"] and closed.closed
    assert aborted.sends == [] and aborted.aborted


def test_everything_else_is_the_wrapped_transports() -> None:
    async def run() -> Any:
        outer = CoalescingTransport(RecordingTransport(), asyncio.get_running_loop())
        return outer.get_extra_info("peername"), outer.is_closing()

    assert asyncio.run(run()) == (("192.0.2.1", 25), False)
