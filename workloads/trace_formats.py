"""Reading one trace file into three validated columns.

A trace format is just which three header columns hold the arrival time, the
prompt tokens and the output tokens, and how the time is written
(``TraceColumns``). The known formats are ``TRACE_FORMATS``; ``csv`` takes the
columns from the user.

Validation is row-precise: every error is a ``TraceError`` whose message reads
``"<path>: row <N>: <what is wrong>"``, where N is the 1-based *data* row (the
header is not counted, blank lines are, so the file line is N + 1).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING

import numpy as np

from sim.fields import MAX_TIME_S

if TYPE_CHECKING:
    import pandas as pd

TimeUnit = Literal["s", "ms", "us", "datetime"]
SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


class TraceError(ValueError):
    """A trace file is missing or malformed; the message names file and row.
    ``row`` is the 1-based data row when the error is about one row."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class TraceColumns:
    """Which header columns hold what. ``time_unit`` says how arrival times are
    written: numbers in s, ms or us, or ``datetime`` strings (ISO 8601, any
    number of fractional digits)."""

    arrival_column: str
    prompt_column: str
    output_column: str
    time_unit: TimeUnit = "s"


TRACE_FORMATS: dict[str, TraceColumns] = {
    # seconds from the first request (Vidur's processed Azure traces)
    "processed": TraceColumns("arrived_at", "num_prefill_tokens", "num_decode_tokens", "s"),
    # raw Azure LLM inference traces 2023/2024, absolute timestamps
    "azure": TraceColumns("TIMESTAMP", "ContextTokens", "GeneratedTokens", "datetime"),
    # BurstGPT: seconds from the start of the log
    "burstgpt": TraceColumns("Timestamp", "Request tokens", "Response tokens", "s"),
}


@dataclass(frozen=True, eq=False)
class RawTrace:
    """A parsed file in file order: times in seconds (any origin), token counts
    >= 0, and, for formats with block hashes, each prompt's content segments."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    segments: tuple | None = None


# JSON-lines formats whose rows carry prompt block hashes (prefix reuse):
# name -> (time field, seconds per unit, tokens per hash id)
HASHED_FORMATS: dict[str, tuple[str, float, int]] = {
    # kvcache-ai/Mooncake's published traces: timestamp in ms, one hash id per 512 prompt tokens
    "mooncake": ("timestamp", 1e-3, 512),
    # Alibaba's Qwen/Bailian traces (chat_id, parent_chat_id, timestamp, input_length, output_length,
    # type, turn, hash_ids): one hash id per 16 prompt tokens; timestamps read as seconds
    "qwen": ("timestamp", 1.0, 16),
}


def is_gzip(path: Path) -> bool:
    """Whether the file starts with the gzip magic bytes (a trace may be compressed)."""
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


def open_text(path: Path, newline: str | None = None):
    """``path`` opened for reading text, gzip-compressed or not."""
    if is_gzip(path):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def sniff_json_lines(path: Path) -> str | None:
    """For a JSON-lines file (its first non-blank character opens an
    object): ``qwen`` when the first row names a ``chat_id``, else
    ``mooncake``. None for any other file."""
    import json

    try:
        with open_text(path) as file:
            line = next((line for line in file if line.strip()), "")
    except (UnicodeDecodeError, OSError, EOFError):
        return None
    if not line.lstrip().startswith("{"):
        return None
    try:
        first = json.loads(line)
    except json.JSONDecodeError:
        return "mooncake"            # the parser names the bad row
    return "qwen" if isinstance(first, dict) and "chat_id" in first else "mooncake"


def parse_hashed_trace(path: Path, label: str, fmt: str) -> RawTrace:
    """Read a JSON-lines trace of ``HASHED_FORMATS``: every row needs the time
    field, ``input_length``, ``output_length`` and ``hash_ids`` (one per
    block of ``tokens per id`` prompt tokens, the last block partial), which
    become the prompt's segments ``(hash id, block length)``."""
    import json

    time_field, unit_s, block = HASHED_FORMATS[fmt]
    times, prompts, outputs, segments = [], [], [], []
    try:
        with open_text(path) as file:
            lines = file.read().splitlines()
    except UnicodeDecodeError as error:
        raise TraceError(f"{label}: not a UTF-8 text file ({error.reason}); expected JSON lines") from None
    except (OSError, EOFError) as error:
        raise TraceError(f"{label}: not a readable gzip file ({error})") from None
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as error:
            raise TraceError(f"{label}: row {row}: not a JSON object ({error.msg})", row) from None
        if not isinstance(rec, dict):
            raise TraceError(f"{label}: row {row}: not a JSON object", row)
        missing = [k for k in (time_field, "input_length", "output_length", "hash_ids") if k not in rec]
        if missing:
            raise TraceError(f"{label}: row {row}: missing {missing[0]!r} ({fmt} rows need {time_field}, "
                             f"input_length, output_length, hash_ids)", row)
        t, n_in, n_out, ids = rec[time_field], rec["input_length"], rec["output_length"], rec["hash_ids"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0 \
                or t * unit_s > MAX_TIME_S:
            raise TraceError(f"{label}: row {row}: {time_field} must be a number in 0..{MAX_TIME_S / unit_s:g}, "
                             f"got {t!r}", row)
        for name, value in (("input_length", n_in), ("output_length", n_out)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
                raise TraceError(f"{label}: row {row}: {name} must be a whole number in 0..{MAX_TOKENS:,}, "
                                 f"got {value!r}", row)
        if not isinstance(ids, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in ids):
            raise TraceError(f"{label}: row {row}: hash_ids must be a list of integers", row)
        if len(ids) != -(-n_in // block):
            raise TraceError(f"{label}: row {row}: {n_in} input tokens need {-(-n_in // block)} hash ids of "
                             f"{block} tokens, got {len(ids)}", row)
        times.append(float(t) * unit_s)
        prompts.append(n_in)
        outputs.append(n_out)
        segments.append(tuple((int(h), min(block, n_in - i * block)) for i, h in enumerate(ids)))
    if not times:
        raise TraceError(f"{label}: no rows; expected JSON lines with {time_field}, input_length, "
                         f"output_length, hash_ids")
    return RawTrace(np.array(times), np.array(prompts, np.int64), np.array(outputs, np.int64), tuple(segments))


def read_header(path: Path, label: str) -> list[str]:
    try:
        with open_text(path, newline="") as file:
            header = next(csv.reader(file), None)
    except (OSError, EOFError) as error:
        raise TraceError(f"{label}: not a readable gzip file ({error})") from None
    except UnicodeDecodeError as error:
        raise TraceError(f"{label}: not a UTF-8 text file ({error.reason}); expected a CSV trace") from None
    except csv.Error as error:
        raise TraceError(f"{label}: not a readable CSV file ({error})") from None
    if not header:
        raise TraceError(f"{label}: empty file, expected a CSV header line")
    return [name.strip() for name in header]


def sniff_format(header: list[str], label: str) -> str:
    """The known format whose columns all appear in ``header``."""
    names = set(header)
    for name, columns in TRACE_FORMATS.items():
        if {columns.arrival_column, columns.prompt_column, columns.output_column} <= names:
            return name
    expected = "; ".join(
        f"{name}: {c.arrival_column},{c.prompt_column},{c.output_column}" for name, c in TRACE_FORMATS.items()
    )
    raise TraceError(
        f"{label}: cannot tell the trace format from header {','.join(header)!r}; "
        f"known formats need the columns ({expected}); otherwise use format 'csv' with a column mapping"
    )


def parse_trace(path: Path, label: str, columns: TraceColumns) -> RawTrace:
    """Read ``path`` and validate the three columns named by ``columns``."""
    frame = _read_frame(path, label)
    wanted = [columns.arrival_column, columns.prompt_column, columns.output_column]
    missing = [name for name in wanted if name not in frame.columns]
    if missing:
        raise TraceError(
            f"{label}: header has no column {missing[0]!r} (needs {', '.join(wanted)}; "
            f"header is {', '.join(map(str, frame.columns))})"
        )
    parsed, errors = [], []
    for name, parse in ((columns.arrival_column, lambda t: _arrival_seconds(t, columns.time_unit, label)),
                        (columns.prompt_column, lambda t: _token_counts(t, label)),
                        (columns.output_column, lambda t: _token_counts(t, label))):
        try:
            parsed.append(parse(frame[name]))
        except TraceError as error:
            errors.append(error)
    if errors:  # report the earliest bad row, whichever column it is in
        raise min(errors, key=lambda error: error.row or 0)
    return RawTrace(*parsed)


def _read_frame(path: Path, label: str) -> pd.DataFrame:
    import pandas as pd

    try:
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False,
            skipinitialspace=True, encoding="utf-8-sig", compression="gzip" if is_gzip(path) else None,
        )
    except pd.errors.EmptyDataError:
        raise TraceError(f"{label}: empty file, expected a CSV header line") from None
    except pd.errors.ParserError as error:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found:
            expected, line, seen = (int(g) for g in found.groups())
            raise _row_error(label, line - 2, f"expected {expected} fields, saw {seen}") from None
        raise TraceError(f"{label}: not a readable CSV file: {error}") from None
    except UnicodeDecodeError as error:
        raise TraceError(f"{label}: not a UTF-8 text file ({error.reason})") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    return frame


def _numbers(texts: pd.Series, label: str) -> np.ndarray:
    import pandas as pd

    """Floats from text; a missing, non-numeric or non-finite cell is an error."""
    try:  # fast path for clean columns; any bad cell raises and is located below
        values = texts.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        values = pd.to_numeric(texts, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        index = _first(bad)
        text = texts.iloc[index]
        if pd.isna(text) or not str(text).strip():
            raise _row_error(label, index, f"missing {texts.name}")
        raise _row_error(label, index, f"{texts.name} is not a finite number: {text!r}")
    return values


MAX_TOKENS = 2**31 - 1
"""Per request and column; a count beyond it is a corrupt cell, not a request."""


def _token_counts(texts: pd.Series, label: str) -> np.ndarray:
    values = _numbers(texts, label)
    bad = (values < 0) | (values != np.floor(values))
    if bad.any():
        index = _first(bad)
        raise _row_error(label, index, f"{texts.name} must be a whole number >= 0, got {texts.iloc[index]!r}")
    huge = values > MAX_TOKENS
    if huge.any():
        index = _first(huge)
        raise _row_error(label, index, f"{texts.name} must be at most {MAX_TOKENS:,} tokens, "
                                       f"got {texts.iloc[index]!r}")
    return values.astype(np.int64)


def _arrival_seconds(texts: pd.Series, time_unit: TimeUnit, label: str) -> np.ndarray:
    if time_unit == "datetime":
        return _datetime_seconds(texts, label)
    values = _numbers(texts, label)
    negative = values < 0
    if negative.any():
        index = _first(negative)
        raise _row_error(label, index, f"{texts.name} is negative: {texts.iloc[index]!r}")
    return _within_clock(values * SECONDS_PER_UNIT[time_unit], texts, label)


def _within_clock(seconds: np.ndarray, texts: pd.Series, label: str) -> np.ndarray:
    late = seconds > MAX_TIME_S
    if late.any():
        index = _first(late)
        raise _row_error(label, index, f"{texts.name} is {seconds[index]:.3g} s into the trace, beyond "
                                       f"{MAX_TIME_S:g} s (about 31 years) where the clock loses precision: "
                                       f"{texts.iloc[index]!r}")
    return seconds


def _datetime_seconds(texts: pd.Series, label: str) -> np.ndarray:
    import pandas as pd

    """Seconds since the earliest timestamp in the column."""
    stripped = texts.fillna("").str.strip()
    try:
        stamps = pd.to_datetime(stripped, format="ISO8601", errors="coerce")
    except (ValueError, TypeError) as error:  # e.g. time-zone-aware mixed with naive
        raise TraceError(f"{label}: column {texts.name}: inconsistent date-times ({error})") from None
    bad = stamps.isna().to_numpy()
    if bad.any():
        index = _first(bad)
        if not stripped.iloc[index]:
            raise _row_error(label, index, f"missing {texts.name}")
        example = "2023-11-16 18:15:46.6805900"
        raise _row_error(label, index, f"{texts.name} is not a date-time like {example!r}: {texts.iloc[index]!r}")
    if len(stamps) == 0:
        return np.empty(0)
    return _within_clock((stamps - stamps.min()).dt.total_seconds().to_numpy(dtype=np.float64), texts, label)


def _row_error(label: str, index: int, what: str) -> TraceError:
    """The error about the data row at 0-based ``index``."""
    return TraceError(f"{label}: row {index + 1}: {what}", row=index + 1)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])
