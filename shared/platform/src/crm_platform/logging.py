"""Structured JSON logs carrying the request and correlation ids of the work at hand."""

from __future__ import annotations

import json
import logging
import math
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# ``json.dumps(doc, default=str)`` made this encoder anew for every line (a keyword argument
# other than the defaults does): one, made once, writes the same text.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self._second: tuple[int, str] = (-1, "")  # a whole second and its text, replaced whole

    def timestamp(self, created: float) -> str:
        """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")``, the
        date and time of day made once per second (every request writes a line). The
        microseconds are rounded as ``fromtimestamp`` rounds them (half to even, a carry into
        the next second), then cut to milliseconds as ``isoformat`` cuts them."""
        fraction, whole = math.modf(created)
        second, micros = int(whole), round(fraction * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        elif micros < 0:  # before 1970
            second, micros = second - 1, micros + 1_000_000
        known, prefix = self._second
        if second != known:
            prefix = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]
            self._second = (second, prefix)
        return f"{prefix}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (rid := request_id_var.get()) is not None:
            doc["request_id"] = rid
        if (cid := correlation_id_var.get()) is not None:
            doc["correlation_id"] = cid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(doc)


def configure_logging(service: str, level: str = "INFO") -> None:
    # A record's thread and process names are never written (the JSON line leaves out every
    # standard attribute); not looking them up takes a fifth of each record's making.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "pymongo", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
