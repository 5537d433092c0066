"""Structured logs: one JSON object per line with the current trace and span ids; secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from agentmesh._settings import Settings
from agentmesh.telemetry._tracing import current_span_id, current_trace_id

# Whatever a careless format string lets through: PEM private keys, bearer tokens, JWTs, password=... pairs.
_SECRET_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)\s*[=:]\s*\S+"),
)
REDACTED = "[REDACTED]"

# LogRecord attributes that are not user "extra" fields.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def redact(text: str) -> str:
    """``text`` with anything that looks like a secret replaced by ``[REDACTED]``."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, message, trace_id, span_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        trace_id = current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = current_span_id()
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, still with the trace id and redaction."""

    def format(self, record: logging.LogRecord) -> str:
        trace_id = current_trace_id()
        line = super().format(record)
        return redact(f"{line} trace_id={trace_id}" if trace_id else line)


class _MeshHandler(logging.StreamHandler[TextIO]):
    """The handler configure_logging installs (a second call replaces it rather than adding another)."""


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send the root logger to ``stream`` (stderr) as JSON lines (``log_format=json``) or text, at ``log_level``."""
    handler = _MeshHandler(stream or sys.stderr)
    if settings.log_format.strip().lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _MeshHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler
