"""Log lines of the long-running processes (api, worker, bootedge; `up` runs the first two):
readable text by default, one JSON object per line with `TEMPERED_LOG_FORMAT=json`.

A JSON line carries time, level, logger and message, and what the line is about when known
(activities/domain/logfields.py): machine, cluster, step, edge, mac, workflow_id, run, boot,
attempt. In the worker those come from Temporal: its `activity.logger` and `workflow.logger`
attach the workflow id (`machine:<id>`, `cluster:<name>`) and the activity type to each record,
and a line logged through any other logger inside an activity is tied to it by Temporal's
activity context. Whatever the format, a redaction filter replaces what looks like a secret
(bearer tokens, token-shaped URL path segments, `token=`/`secret=` values, private key blocks,
kubeadm join tokens) with `<redacted>`: a safety net behind code that never logs secrets.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone

from fastapi import Request

from activities.domain import logfields

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"
_SECRET_WORDS = r"[\w.-]*(?:token|secret|password|passwd|private[_-]key|certificate[_-]key)"
_REDACTIONS = [
    (re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S),
     f"{REDACTED} private key"),
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{REDACTED}"),  # not "bearer token"
    (re.compile(rf"(?i)(\b{_SECRET_WORDS}=)[^\s&\"',;]+"), rf"\1{REDACTED}"),  # tempered.token=, ?token=
    (re.compile(rf"(?i)([\"']{_SECRET_WORDS}[\"']\s*:\s*[\"']?)[^\s\"',}}]+"), rf"\1{REDACTED}"),  # {'secret': ...}
    (re.compile(r"(?i)(--(?:token|certificate-key)[ =])\S+"), rf"\1{REDACTED}"),
    (re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b"), REDACTED),  # a kubeadm bootstrap token
    (re.compile(r"(?<=/)[A-Za-z0-9_-]{40,}(?=[/?#\s\"']|$)"), REDACTED),  # a token in a URL path (a UUID is 36)
]


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Redact the message and traceback of every record before any formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the message: the handler reports it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            record.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None  # formatters use the redacted exc_text from here on
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _temporal_fields(record: logging.LogRecord) -> dict[str, object]:
    """machine/cluster, step, run and attempt from the Temporal context of the record."""
    details = getattr(record, "temporal_activity", None)
    if details is None and (activity := sys.modules.get("temporalio.activity")) is not None and activity.in_activity():
        info = activity.info()  # a line from a logger other than activity.logger, inside an activity
        details = {"workflow_id": info.workflow_id, "workflow_run_id": info.workflow_run_id,
                   "activity_type": info.activity_type, "attempt": info.attempt}
    if details is None:
        details = getattr(record, "temporal_workflow", None) or {}
    fields: dict[str, object] = {
        "step": details.get("activity_type"),
        "workflow_id": details.get("workflow_id"),
        "run": details.get("workflow_run_id") or details.get("run_id"),
        "attempt": details.get("attempt") if details.get("activity_type") else None,
    }
    kind, _, name = str(details.get("workflow_id") or "").partition(":")
    if kind in ("machine", "cluster") and name:
        fields[kind] = name
    return fields


def context_fields(record: logging.LogRecord) -> dict[str, object]:
    """The process's and the task's fields, then Temporal's, then the record's own `extra`."""
    fields = logfields.current() | {k: v for k, v in _temporal_fields(record).items() if v is not None}
    fields |= {name: getattr(record, name) for name in logfields.FIELDS if getattr(record, name, None) is not None}
    return {name: fields[name] for name in logfields.FIELDS if name in fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context_fields(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def log_format() -> str:
    value = os.environ.get("TEMPERED_LOG_FORMAT", "text").strip().lower() or "text"
    if value not in FORMATS:
        raise SystemExit(f"TEMPERED_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
    return value


def setup_logging() -> None:
    """Log lines on stderr, in the format TEMPERED_LOG_FORMAT asks for, secrets redacted."""
    json_lines = log_format() == "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT))
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # a library's warning is a log line too, not raw text on stderr
    if json_lines and "temporalio" in sys.modules:  # the worker and the API: before they connect
        _temporal_lines()


def _temporal_lines() -> None:
    """Temporal's context goes in the fields (not repeated in the message), and the SDK core's
    own lines (Rust, warnings such as lost polls) through Python logging, not its console format."""
    from temporalio import activity, workflow
    from temporalio.runtime import Runtime, TelemetryConfig

    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False
    Runtime.set_default(Runtime(telemetry=TelemetryConfig(logging=core_logging())), error_if_already_set=False)


def core_logging():
    """The SDK core's log settings (its default levels) forwarded to the `temporalio.core` logger:
    for any `temporalio.runtime.Runtime` a process builds (e.g. one that also exports metrics)."""
    from temporalio.runtime import LogForwardingConfig, LoggingConfig, TelemetryFilter

    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )


async def bind_route_fields(request: Request) -> None:
    """An API dependency: the rest of the request's log lines name the machine, cluster or edge
    its path does (`/v1/machines/{machine_id}`, `/v1/clusters/{name}`, `/v1/edges/{name}`)."""
    params, path = request.path_params, request.url.path
    logfields.bind(
        machine=params.get("machine_id"),
        cluster=params.get("name") if "/clusters/" in path else None,
        edge=params.get("name") if "/edges/" in path else None,
    )
