"""Reading data files as records, each with the line it starts on: JSONL, CSV and JSON.

One reader per format, shared by the built-in benchmarks and custom tasks. A row that cannot be read
(a malformed JSONL line, a CSV row with the wrong number of fields, a JSON item that is not an
object) comes back as a record with an `error` instead of data, so the caller can report every bad
row with its line; a file that cannot be read at all raises GreaterError.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from greater.errors import GreaterError

SUFFIXES = (".jsonl", ".csv", ".json")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Record:
    """One row of a data file: its fields, or why it could not be read."""

    line: int
    data: dict | None
    error: str = ""


def read_records(file: Path, json_key: str | None = None) -> list[Record]:
    """The rows of a .jsonl, .csv or .json file, in file order.

    A .json file is a list of objects or an object with a list under "examples" (BBH's format);
    `json_key` requires the object form with that key.
    """
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise GreaterError(f"{file}: unsupported data format {suffix or '(no suffix)'!r}; use .jsonl, .csv or .json")
    text = read_text(file)
    if suffix == ".jsonl":
        return _jsonl_records(text)
    if suffix == ".csv":
        return _csv_records(text, file)
    return _json_records(text, file, json_key)


def read_text(file: Path) -> str:
    """The file as UTF-8 text (a byte-order mark dropped, line ends kept); GreaterError when it cannot be read."""
    try:
        return file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise GreaterError(f"{file} not found") from None
    except UnicodeDecodeError:
        raise GreaterError(f"{file}: not UTF-8 text") from None
    except OSError as err:
        raise GreaterError(f"{file}: cannot read it ({err.strerror})") from None


def _jsonl_records(text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            records.append(Record(number, None, f"invalid JSON ({err.msg} at column {err.colno})"))
            continue
        records.append(_object(number, data))
    return records


def _csv_records(text: str, file: Path) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise GreaterError(f"{file}: empty CSV file; the first line must name the columns")
        header = [name.strip() for name in header]
        records, start = [], reader.line_num + 1
        for row in reader:  # a quoted field may span lines: a row starts where the previous one ended
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                records.append(Record(line, None, f"has {len(row)} fields, the header has {len(header)}"))
            else:
                records.append(Record(line, dict(zip(header, row, strict=True))))
    except csv.Error as err:
        raise GreaterError(f"{file}: line {reader.line_num}: malformed CSV ({err})") from None
    return records


def _json_records(text: str, file: Path, key: str | None) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise GreaterError(f"{file}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg})") from None
    wanted = key or "examples"
    if isinstance(data, list) and key is None:
        items, start = data, _WHITESPACE.match(text).end()
    elif isinstance(data, dict) and isinstance(data.get(wanted), list):
        items, start = data[wanted], _value_offset(text, wanted)
    else:
        form = f'{{"{wanted}": [...]}}' if key else f'a list of objects or {{"{wanted}": [...]}}'
        raise GreaterError(f'{file}: no "{wanted}" list; expected {form}')
    offsets = _item_offsets(text, start)
    lines, line, position = [], 1, 0
    for offset in offsets:
        line += text.count("\n", position, offset)
        lines.append(line)
        position = offset
    return [_object(line, item) for line, item in zip(lines, items, strict=True)]


def _object(line: int, data: object) -> Record:
    if isinstance(data, dict):
        return Record(line, data)
    return Record(line, None, f"is a JSON {type(data).__name__}, not an object")


def _value_offset(text: str, key: str) -> int:
    """Offset of the value of the top-level `key` in a JSON object text (the last one, as json.loads keeps)."""
    decoder = json.JSONDecoder()
    index = _WHITESPACE.match(text).end() + 1  # past "{"
    found = -1
    while True:
        index = _WHITESPACE.match(text, index).end()
        name, index = decoder.raw_decode(text, index)
        index = _WHITESPACE.match(text, index).end() + 1  # past ":"
        index = _WHITESPACE.match(text, index).end()
        if name == key:
            found = index
        _, index = decoder.raw_decode(text, index)
        index = _WHITESPACE.match(text, index).end()
        if text[index] != ",":
            return found
        index += 1


def _item_offsets(text: str, start: int) -> list[int]:
    """Offsets of the items of the JSON array that starts at `start` (its "[")."""
    decoder = json.JSONDecoder()
    index = _WHITESPACE.match(text, start + 1).end()
    offsets: list[int] = []
    while text[index] != "]":
        offsets.append(index)
        _, index = decoder.raw_decode(text, index)
        index = _WHITESPACE.match(text, index).end()
        if text[index] == ",":
            index = _WHITESPACE.match(text, index + 1).end()
    return offsets
