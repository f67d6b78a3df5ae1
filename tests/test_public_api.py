"""Each package's public surface: every name in `__all__` exists and is documented."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = ["wal", "agent", "agent.sources.postgres"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_exists_and_is_documented(package):
    module = importlib.import_module(package)
    assert module.__doc__ and module.__doc__.strip(), f"{package} has no docstring"
    names = module.__all__
    assert len(names) == len(set(names)), f"{package}.__all__ repeats a name"
    for name in names:
        assert hasattr(module, name), f"{package}.__all__ names {name!r}, which it does not define"
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        assert doc and doc.strip(), f"{package}.{name} has no docstring"
        assert not doc.startswith(f"{obj.__name__}("), f"{package}.{name} has only a generated docstring"
