"""DDL capture: an event trigger that emits each DDL statement as a transactional logical message.

The message travels in the same transaction as the DDL, so it reaches the log in commit order with
the data changes around it, and the decoder turns it into an `op = "ddl"` change.
"""

from __future__ import annotations

import psycopg

from .changes import DDL_PREFIX
from .errors import ReplicationSetupError

TRIGGER_NAME = "wallaby_capture_ddl"
FUNCTION_NAME = "wallaby_capture_ddl"
# A session that sets this to 'off' runs DDL the trigger does not capture.
QUIET_SETTING = "wallaby.ddl_capture"

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION public.{FUNCTION_NAME}() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    command record;
    target text := '';
    kind text := '';
BEGIN
    -- The agent's own statements (the trigger's installation, publication upkeep) are not captured.
    IF current_setting('{QUIET_SETTING}', true) = 'off' THEN
        RETURN;
    END IF;
    FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        IF command.object_type = 'table' AND target = '' THEN
            target := command.object_identity;
            kind := command.object_type;
        END IF;
    END LOOP;
    PERFORM pg_logical_emit_message(
        true,
        '{DDL_PREFIX}',
        json_build_object(
            'statement', current_query(),
            'command_tag', tg_tag,
            'table', target,
            'object_type', kind,
            'user', current_user
        )::text
    );
END
$fn$
"""


def quiet_ddl(conn: psycopg.Connection) -> None:
    """Keep this session's own DDL out of the capture (for the agent's setup connection)."""
    conn.execute(f"SET {QUIET_SETTING} = 'off'")


def install_ddl_capture(conn: psycopg.Connection) -> bool:
    """Install (or refresh) the trigger; True when it had to be created. Needs a superuser.

    The refresh is itself DDL: it runs quietly, or every reconnect would log an op=ddl change.
    """
    quiet_ddl(conn)
    (is_super,) = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()  # type: ignore[misc]
    if not is_super:
        raise ReplicationSetupError("capture_ddl = true needs a superuser to install an event trigger")
    conn.execute(_FUNCTION)
    exists = conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", (TRIGGER_NAME,)).fetchone()
    if exists is None:
        conn.execute(
            f"CREATE EVENT TRIGGER {TRIGGER_NAME} ON ddl_command_end EXECUTE FUNCTION public.{FUNCTION_NAME}()"
        )
        return True
    return False


def remove_ddl_capture(conn: psycopg.Connection) -> None:
    conn.execute(f"DROP EVENT TRIGGER IF EXISTS {TRIGGER_NAME}")
    conn.execute(f"DROP FUNCTION IF EXISTS public.{FUNCTION_NAME}()")
