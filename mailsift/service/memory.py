"""Give freed model arrays back to the system, so a worker's memory is what it holds.

glibc's malloc gives a block above its mmap threshold (128 KiB) a mapping of its own,
unmapped when freed. But once such a block is freed it raises the threshold to that
block's size (up to 32 MiB): later blocks below it come from the heap, where one small
allocation above them keeps them from ever going back. A worker frees a whole model, tens
of MiB in 1-8 MiB arrays, at each swap to a rebuilt one. Measured with ``mailsift bench
--rebuild-during`` (2 workers, SpamAssassin): the worker that swapped held 247 MiB after
it, its peak; with the threshold fixed, 164 MiB, and its peak was 226 MiB.
"""

from __future__ import annotations

import ctypes
import logging

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

log = logging.getLogger("mailsift.memory")

MMAP_THRESHOLD = 128 * 1024
"""glibc's own default; setting it explicitly also turns its dynamic raise off."""
_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>


def fix_mmap_threshold() -> bool:
    """Fix malloc's mmap threshold at :data:`MMAP_THRESHOLD`; False where the C library
    has no ``mallopt`` or refuses it (not glibc), and nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols this process already has
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library: freed memory is returned as it decides")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
