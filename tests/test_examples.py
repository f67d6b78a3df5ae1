"""Every configuration in examples/ loads and validates as it stands."""

from __future__ import annotations

import pathlib

import pytest

from agent.config import load_config

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.toml"))


def test_there_are_examples():
    assert EXAMPLES, "examples/ holds no configuration files"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path):
    config = load_config(path, environ={})
    assert config.sources, f"{path.name} configures no source"
