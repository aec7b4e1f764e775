"""``python -m mailsift.cli``: the ``mailsift`` command, as tests and benchmarks run it."""

from mailsift.cli import app

app()
