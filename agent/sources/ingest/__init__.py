"""The `http_ingest` source: local applications POST JSON or NDJSON records into the log.

    source = HttpIngestSource(config, log)
    source.start()          # binds config.listen and serves in background threads
    host, port = source.address
    ...
    source.stop()           # stops accepting, finishes in-flight requests, joins its threads

Each request's records are appended with one `append_batch(wait=True)`, so a 202 means they are
durable, and concurrent requests share the log's fsyncs (group commit). Reading and checking a
body is `body.py`, the per-client token bucket `ratelimit.py`, the rejection tally
`decisions.py`, the HTTP server and its handler `handler.py`, and the lifecycle `source.py`.
docs/ingest.md is the user's guide.
"""

from .decisions import Decisions, Rejection
from .errors import IngestSourceError, ListenError
from .source import HttpIngestSource

__all__ = ["Decisions", "HttpIngestSource", "IngestSourceError", "ListenError", "Rejection"]
