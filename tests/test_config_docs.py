"""docs/configuration.md stays honest: every option in its section, with the code's default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from agent.config import DDL_ENVIRONMENT, ENV_NESTED_DELIMITER, ENV_PREFIX, AgentConfig, load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
TEXT = DOC.read_text()


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _walk(model: type[BaseModel], path: tuple[str, ...] = ()):
    """Every model reachable from AgentConfig, with the option path of its table."""
    yield path, model
    for name, field in model.model_fields.items():
        for inner in _models_in(field.annotation):
            yield from _walk(inner, (*path, name))


MODELS = list(_walk(AgentConfig))


def _heading(path: tuple[str, ...], model: type[BaseModel]) -> str:
    if not path:
        return "Top level"
    if path in (("sources",), ("destinations",)):
        tag = get_args(model.model_fields["type"].annotation)[0]
        return f'`[[{path[0]}]]` with `type = "{tag}"`'
    return f"`[{'.'.join(path)}]`"


def _section(heading: str) -> str:
    """The text under `heading`, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#|\Z)", TEXT, re.MULTILINE | re.DOTALL)
    assert match, f"docs/configuration.md has no section headed {heading!r}"
    return match.group(1)


def _rows(section: str) -> dict[str, dict[str, str]]:
    """The section's option table as {option: {column: cell}}."""
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    assert lines, "the section has no option table"
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:  # after the header and its --- separator
        cells = dict(zip(columns, (cell.strip() for cell in line.strip("|").split("|")), strict=False))
        rows[cells["Option"].strip("`")] = cells
    return rows


def _ids(item):
    path, _ = item
    return ".".join(path) or "top"


@pytest.mark.parametrize("item", MODELS, ids=_ids)
def test_every_option_is_documented_in_its_section(item):
    path, model = item
    documented = set(_rows(_section(_heading(path, model))))
    assert documented - set(model.model_fields) == set(), "documented but not an option"
    assert set(model.model_fields) - documented == set(), "an option missing from the docs"


def _validated(model: type[BaseModel], name: str, value: Any) -> Any:
    # Validate one field the way a file value would be, without the model's other required fields.
    instance = model.model_construct()
    model.__pydantic_validator__.validate_assignment(instance, name, value)
    return getattr(instance, name)


@pytest.mark.parametrize("item", MODELS, ids=_ids)
def test_documented_defaults_are_the_codes(item):
    path, model = item
    for name, row in _rows(_section(_heading(path, model))).items():
        field, cell = model.model_fields[name], row["Default"]
        if cell == "required":
            assert field.is_required(), name
            continue
        default = field.get_default(call_default_factory=True)
        if cell.startswith("see "):
            assert isinstance(default, BaseModel), name
        elif cell == "none":
            assert default is None, name
        else:
            code = re.search(r"`([^`]*)`", cell)
            assert code, f"{name}: default {cell!r} is neither code, none, required nor see"
            typed = tomllib.loads(f"value = {code.group(1)}")["value"]
            assert _validated(model, name, typed) == _validated(model, name, default), name


@pytest.mark.parametrize("item", MODELS, ids=_ids)
def test_documented_environment_variables_are_the_ones_read(item):
    path, model = item
    for name, row in _rows(_section(_heading(path, model))).items():
        if "Environment" not in row:
            continue
        if path[:1] == ("sources",):
            expected = next(variable for variable, option in DDL_ENVIRONMENT.items() if option == name)
        else:
            expected = ENV_PREFIX + ENV_NESTED_DELIMITER.join((*path, name)).upper()
        assert row["Environment"] == f"`{expected}`", name


def test_the_examples_load(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", TEXT, re.DOTALL)
    assert blocks
    for index, block in enumerate(blocks):
        path = tmp_path / f"example{index}.toml"
        path.write_text(block)
        load_config(path, environ={})
