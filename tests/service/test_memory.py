"""A worker gives freed model arrays back to the system (glibc's malloc, a real process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mailsift.service.memory import fix_mmap_threshold

# As a worker swapping models: one large array freed (glibc then raises its mmap
# threshold), then a model's worth of 4 MiB arrays, small objects allocated after them,
# and the arrays freed. Prints the MiB still resident that the arrays had taken.
_SWAP = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mailsift.service.memory import fix_mmap_threshold

    def rss_mib():
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) // 1024

    if sys.argv[1] == "fixed":
        assert fix_mmap_threshold()
    old = np.ones(2**20)
    del old
    before = rss_mib()
    arrays = [np.ones(2**19) for _ in range(8)]
    small = [np.ones(4) for _ in range(1000)]
    del arrays
    print(rss_mib() - before)
    """
)


def _held_after_free(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _SWAP, mode], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_arrays_go_back_to_the_system_once_the_threshold_is_fixed() -> None:
    if not fix_mmap_threshold():
        pytest.skip("this C library has no mallopt (not glibc)")
    assert _held_after_free("default") >= 24  # of 32 MiB: the case the fix is for
    assert _held_after_free("fixed") <= 4
