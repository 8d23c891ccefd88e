"""telemetry.log_format: auto is console text on a terminal and JSON elsewhere; console lines hide quiet extras."""

from __future__ import annotations

import io
import json
import logging

from services.core.settings import TelemetrySettings
from services.core.telemetry import CONSOLE_QUIET, JsonFormatter, TextFormatter, iso_time, log_formatter


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_json_off_a_terminal_and_coloured_text_on_one() -> None:
    assert isinstance(log_formatter("auto", io.StringIO()), JsonFormatter)
    on_tty = log_formatter("auto", _Tty())
    assert isinstance(on_tty, TextFormatter) and on_tty.colour
    plain = log_formatter("console", io.StringIO())
    assert isinstance(plain, TextFormatter) and not plain.colour
    assert isinstance(log_formatter("text", io.StringIO()), TextFormatter)
    assert isinstance(log_formatter("json", _Tty()), JsonFormatter)


def test_default_format_is_auto() -> None:
    assert TelemetrySettings().log_format == "auto"


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "GET / 200", None, None)
    record.__dict__.update(extra)
    return record


def test_quiet_fields_stay_out_of_console_lines_but_not_json() -> None:
    record = _record(status=200, user="alice", **{CONSOLE_QUIET: ("status",)})
    line = TextFormatter().format(record)
    assert "status=" not in line and "user=alice" in line
    doc = json.loads(JsonFormatter().format(record))
    assert doc["status"] == 200 and CONSOLE_QUIET not in doc


def test_iso_time() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
