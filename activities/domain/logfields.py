"""What a log line is about, besides its message: machine, cluster, edge, MAC, boot.

Code that knows one of these says so once, and every line logged after it carries the field,
whatever logger it goes through: `bind` for the rest of the current request or task (a
contextvar, so concurrent requests never mix), `set_process` for the whole process (an edge's
name, learned from the control plane). api/logs.py's JSON formatter reads `current()`. It lives
in the domain, pure, because the boot edge may read nothing else of activities.
"""

from __future__ import annotations

from contextvars import ContextVar

FIELDS = ("machine", "cluster", "step", "edge", "mac", "workflow_id", "run", "boot", "attempt")

_context: ContextVar[dict[str, object]] = ContextVar("tempered_log_fields", default={})
_process: dict[str, object] = {}


def _known(fields: dict[str, object]) -> dict[str, object]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"not a log field: {', '.join(sorted(unknown))}")
    return {name: value for name, value in fields.items() if value not in (None, "")}


def bind(**fields: object) -> None:
    """Add fields to every line logged from here to the end of this request or task."""
    _context.set(_context.get() | _known(fields))


def set_process(**fields: object) -> None:
    """Add fields to every line this process logs from now on."""
    _process.update(_known(fields))


def current() -> dict[str, object]:
    return _process | _context.get()
