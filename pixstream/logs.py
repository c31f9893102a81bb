"""Logging setup, done once by the CLI: human text by default, one JSON object a line on demand.

Modules log with `logging.getLogger(__name__)` and put machine fields in `extra=` (job_id,
step, op, attempt); the JSON formatter keeps them as keys. A warning repeated from one place
(aiokafka logs every failed connect: ~70 lines/s once Kafka is gone) is let through once per
`REPEAT_SECONDS`, with the count of those held back in `repeated`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

#: A warning (or worse) repeated from one call site passes once per this many seconds.
REPEAT_SECONDS: Final = 10.0
#: Call sites remembered; past it the memory starts afresh (messages built without a template
#: would otherwise grow it without end).
_MAX_SITES: Final = 1024

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


class RepeatLimiter(logging.Filter):
    """Pass a warning or worse from one call site (logger, level, message template) once per
    `interval` seconds; the next one to pass says how many were held back (`repeated`)."""

    def __init__(
        self, interval: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._sites: dict[tuple[str, int, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        site = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            last = self._sites.get(site)
            if last is not None and now - last[0] < self.interval:
                self._sites[site] = (last[0], last[1] + 1)
                return False
            if len(self._sites) >= _MAX_SITES:
                self._sites.clear()
            self._sites[site] = (now, 0)
        if last is not None and last[1]:
            record.repeated = last[1]
        return True


def configure(level: str = "INFO", *, json_output: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatLimiter())
    handler.setFormatter(
        JsonFormatter()
        if json_output
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The libraries speak at INFO only when we are asked for DEBUG (their own DEBUG is one
    # line per fetch): rebalances and recoveries are what a debugging operator needs to see.
    libraries = logging.INFO if root.level <= logging.DEBUG else max(logging.WARNING, root.level)
    for noisy in ("aiokafka", "botocore", "aiobotocore", "faust", "mode"):
        logging.getLogger(noisy).setLevel(libraries)
