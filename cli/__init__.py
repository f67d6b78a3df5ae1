"""cli: the `wallaby-agent` command line, a thin skin over the `wal` and `agent` packages.

The typer app lives in `cli.main` (entry point `cli.main:main`); each command group has its own
module (`cli.wal`, ...). Nothing is imported here, so `python -m cli.main` runs without warnings.
"""

__all__: list[str] = []
