"""Where the shared developer corpora are, and the skip when a checkout has none.

They live beside the checkout (``../shared/corpora``); a checkout elsewhere (a CI clone
in ``/tmp``, a worktree) points ``SHARED_CORPORA`` at them, so the corpus tests run
there too instead of skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CORPORA = Path(
    os.environ.get("SHARED_CORPORA") or Path(__file__).resolve().parents[2] / "shared/corpora"
)
SPAMASSASSIN = CORPORA / "spamassassin"


def require(corpus: Path) -> Path:
    """``corpus``, or skip the test saying where it was looked for."""
    if not (corpus / "full" / "index").is_file():
        pytest.skip(f"corpus not found at {corpus} (expected full/index; see SHARED_CORPORA)")
    return corpus
