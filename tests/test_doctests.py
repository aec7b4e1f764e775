"""The examples in docstrings run: a docstring that shows a call shows what it returns."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import mailsift

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(mailsift.__path__, prefix="mailsift.")
    if not info.name.endswith(".__main__")  # importing one runs the program
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
