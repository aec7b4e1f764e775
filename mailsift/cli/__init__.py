"""The ``mailsift`` command: options, help, progress and one-line errors over library
functions, which do the work.

One module per task group of ``mailsift --help`` (:data:`mailsift.cli_help.TASKS`):
:mod:`.serving`, :mod:`.gateway`, :mod:`.learning`, :mod:`.measuring`, :mod:`.tokens`,
:mod:`.aliases`; what they share is in :mod:`.app`, :mod:`.progress` and :mod:`.state`.
Importing them registers their commands on :data:`app`; the help lists them by task
whatever the order. The libraries a command uses are imported inside it, so that
``mailsift --help`` stays fast.
"""

from mailsift.cli import aliases, gateway, learning, measuring, serving, tokens
from mailsift.cli.app import app

__all__ = ["aliases", "app", "gateway", "learning", "measuring", "serving", "tokens"]
