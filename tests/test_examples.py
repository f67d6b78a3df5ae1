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


@pytest.mark.parametrize("path", [p for p in EXAMPLES if "-to-" in p.name], ids=lambda p: p.name)
def test_delivery_examples_name_a_destination(path):
    assert load_config(path, environ={}).destinations, f"{path.name} delivers nowhere"


def test_the_systemd_unit_runs_the_agent_with_a_config():
    unit = (EXAMPLES[0].parent / "wallaby-agent.service").read_text()
    assert "ExecStart=" in unit and " run --config " in unit
    assert "[Install]" in unit and "Restart=always" in unit
