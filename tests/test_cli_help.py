"""Every command has help text and is mentioned in the documentation (README or docs/)."""

from __future__ import annotations

import pathlib

import pytest
import typer

from cli.main import app

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))])


def _commands(command, path: tuple[str, ...] = ()):
    # typer vendors click privately: a group is whatever has sub-commands.
    if getattr(command, "commands", None):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_the_app_has_the_commands_the_issues_name():
    names = {" ".join(path) for path, _ in COMMANDS}
    for expected in (
        "run",
        "status",
        "wal replay",
        "dlq list",
        "certify",
        "stream pull",
        "flow pause",
        "wal verify",
    ):
        assert expected in names, expected


@pytest.mark.parametrize("item", COMMANDS, ids=lambda item: " ".join(item[0]))
def test_command_has_help_and_docs(item):
    path, command = item
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
    assert f"wallaby-agent {' '.join(path)}" in DOCS, f"`wallaby-agent {' '.join(path)}` is not in the docs"
