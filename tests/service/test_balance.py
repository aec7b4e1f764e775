"""The load board workers balance on: a slot each, read across processes, freed by death."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsift.service.http.balance import SLOTS, LoadBoard

_SIBLING = """
import sys
from mailsift.service.http.balance import LoadBoard
board = LoadBoard(sys.argv[1])
board.claim()
board.publish(int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.read()  # hold the slot until the test closes stdin or kills this process
"""


@pytest.fixture
def board_path() -> Iterator[str]:
    path = LoadBoard.create()
    yield path
    Path(path).unlink(missing_ok=True)


def _sibling(path: str, held: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIBLING, path, str(held)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_worker_alone_has_no_sibling_to_defer_to(board_path: str) -> None:
    board = LoadBoard(board_path)
    board.claim()
    board.publish(5)
    assert board.least_other() is None


def test_each_worker_sees_the_least_loaded_sibling(board_path: str) -> None:
    siblings = [_sibling(board_path, 7), _sibling(board_path, 3)]
    try:
        board = LoadBoard(board_path)
        board.claim()
        board.publish(9)  # its own count never counts as a sibling's
        assert board.least_other() == 3
    finally:
        for proc in siblings:
            proc.kill()
            proc.wait()


def test_a_dead_workers_count_is_ignored_and_its_slot_reused(board_path: str) -> None:
    board = LoadBoard(board_path)
    board.claim()
    sibling = _sibling(board_path, 1)
    assert board.least_other() == 1
    sibling.kill()
    sibling.wait()
    assert board.least_other() is None
    # Every slot taken by a process that has since died is free for a replacement.
    for _ in range(SLOTS + 2):
        replacement = _sibling(board_path, 4)
        replacement.kill()
        replacement.wait()
    survivor = _sibling(board_path, 2)
    try:
        assert board.least_other() == 2
    finally:
        survivor.kill()
        survivor.wait()
