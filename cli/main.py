"""The `wallaby-agent` entry point: the root typer app, its command groups, and the error handler.

Every error a user can cause ends as one line on stderr (`error: ...`) and an exit code, never a
traceback: 2 for bad usage or a path that cannot be read, 1 for anything else the log raises.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from agent.errors import AgentError, ConfigError
from agent.sources.postgres.errors import SourceError
from wal.errors import NotALog, WalError
from wal.format import slow_crc_warning

from . import backfill as backfill_commands
from . import certify as certify_commands
from . import ddl as ddl_commands
from . import dlq as dlq_commands
from . import flow as flow_commands
from . import replay as replay_commands
from . import run as run_commands
from . import status as status_commands
from . import stream as stream_commands
from . import wal as wal_commands

EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad usage, or a path that does not exist or cannot be read


class _OneLineErrors(TyperGroup):
    """The root command: runs the CLI without click's own error display, and shows errors as one line."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except typer.TyperException as exc:  # click's usage errors; typer 0.29 vendors click privately
            code = exc.exit_code
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError":
                typer.echo(exc.format_message(), err=True)  # the message is the help text
            else:
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                _fail(f"{exc.format_message()}{hint}", code)
        except typer.Abort:
            code = _fail("aborted", EXIT_FAILURE)
        except NotALog as exc:
            code = _fail(str(exc), EXIT_USAGE)
        except ConfigError as exc:  # nothing has started
            code = _fail(str(exc), EXIT_USAGE)
        except (AgentError, SourceError) as exc:
            code = _fail(str(exc), EXIT_FAILURE)
        except WalError as exc:
            code = _fail(str(exc), EXIT_FAILURE)
        except OSError as exc:
            code = _fail(describe_os_error(exc), EXIT_USAGE)
        if not standalone_mode:
            return code
        sys.exit(code)


def describe_os_error(exc: OSError) -> str:
    """`path: No such file or directory` rather than `[Errno 2] No such file or directory: 'path'`."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    return f"{exc.filename}: {reason}"


def _fail(message: str, code: int) -> int:
    # One line, whatever the message holds: a multi-line error would read as several.
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return code


app = typer.Typer(
    cls=_OneLineErrors,
    name="wallaby-agent",
    help="wallaby-agent: a local-first change-capture agent with its own durable write-ahead log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
wal_commands.app.command("replay")(replay_commands.replay_command)
app.add_typer(wal_commands.app, name="wal")
app.command("run")(run_commands.run_command)
app.command("status")(status_commands.status_command)
app.add_typer(run_commands.source_app, name="source")
app.command("backfill")(backfill_commands.backfill_command)
app.add_typer(ddl_commands.app, name="ddl")
app.add_typer(flow_commands.app, name="flow")
app.add_typer(dlq_commands.app, name="dlq")
app.add_typer(stream_commands.app, name="stream")
app.command("certify")(certify_commands.certify_command)


def main() -> None:
    """Run the command line (the `wallaby-agent` console script)."""
    slow = slow_crc_warning()
    if slow is not None:
        typer.echo(f"warning: {slow}", err=True)
    app(prog_name="wallaby-agent")


if __name__ == "__main__":
    main()
