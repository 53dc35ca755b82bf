"""Load events from JSON Lines, CSV and Parquet files into the event store, idempotent on uuid."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import Invalid, Storage
from .sources import NON_FINITE_HINT
from .sources.duckdb import DuckDBEventStore

READERS = {  # no hive partitioning: a file under date=2026-03-01/ (an archive) gains no `date` column
    ".jsonl": "read_json($path, format = 'newline_delimited', maximum_depth = 1, hive_partitioning = false)",
    ".ndjson": "read_json($path, format = 'newline_delimited', maximum_depth = 1, hive_partitioning = false)",
    ".json": "read_json($path, format = 'auto', maximum_depth = 1, hive_partitioning = false)",
    # RFC 4180 (what the exports write): sniffing the quote let a file with an unbalanced quote in as data
    ".csv": "read_csv($path, header = true, delim = ',', quote = '\"', escape = '\"', hive_partitioning = false)",
    ".parquet": "read_parquet($path, hive_partitioning = false)",
}
MAGIC = {".gz": (b"\x1f\x8b", "gzip"), ".zst": (b"\x28\xb5\x2f\xfd", "zstd")}
"""What a compressed file starts with, and the codec's name."""
CODEC_ERRORS = ("GZIP", "frame", "zstd", "ZSTD", "decompress")
"""Words of DuckDB's I/O errors about a compressed stream that breaks off or is corrupt inside."""
CSV_REASONS = re.compile(r"^(Value with unterminated quote found\.|Expected Number of Columns: \d+ Found: \d+|"
                         r"Invalid unicode .*not utf-8 encoded\.)$", re.M)
"""The lines of DuckDB's CSV errors that say what is wrong without quoting the file's data."""
REQUIRED = ("event", "distinct_id", "timestamp")
KNOWN = {"uuid", "project_id", "properties", "inserted_at", *REQUIRED}
STRINGS = r'"(?:[^"\\]|\\.)*"'
"""A JSON string (RE2): what is left when they are taken out of a JSON text is its structure."""
BAD_OFFSET = r"\d:\d\d(?::\d\d(?:\.\d*)?)?\s*[+-](?:(?:2[4-9]|[3-9]\d)(?::?\d\d){0,2}|\d\d:?(?:[6-9]\d(?::?\d\d)?|\d\d:?[6-9]\d))\s*$"
"""A time whose UTC offset is past RFC 3339's (hours 00-23, minutes 00-59): DuckDB takes +25:00 as 25 hours."""
NAMED_NON_FINITE = r'"((?:[^"\\]|\\.)*)"\s*:\s*[+-]?(?i:nan|inf)'
"""A property whose value is NaN or Infinity itself, its name in group 1 (one nested deeper goes unnamed)."""


def non_finite(json_text: str) -> str:
    """SQL: true when the JSON text `json_text` holds NaN or Infinity outside its strings (DuckDB's
    reader takes them, in any case, and keeps them as written; JSON has no such number and strict
    parsers reject them). The cheap test first (NON_FINITE_HINT): most texts pass it."""
    return (f"CASE WHEN regexp_matches({json_text}, '{NON_FINITE_HINT}') THEN "
            f"regexp_matches(regexp_replace({json_text}, '{STRINGS}', '\"\"', 'g'), '(?i)nan|inf') ELSE false END")


def reader_for(path: Path) -> str:
    """The DuckDB table function that reads `path`, chosen by extension (`.gz`/`.zst` allowed for text)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in READERS or (ext == ".parquet" and path.suffix.lower() != ".parquet"):
        raise Invalid(f"{path}: cannot ingest {ext or 'a file without extension'}; use .jsonl, .json, .csv or .parquet")
    return READERS[ext]


def check_file(path: Path, shown: str) -> None:
    """Raise Invalid, saying why, unless `path` is a non-empty file this process can read, and
    compressed as its extension says."""
    if path.is_dir():
        raise Invalid(f"{shown}: is a directory; name the files in it (e.g. {shown}/*.jsonl)")
    if not path.exists():
        raise Invalid(f"{shown}: no such file")
    if not path.is_file():
        raise Invalid(f"{shown}: not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise Invalid(f"{shown}: cannot read it ({exc.strerror})") from None
    if not head:
        raise Invalid(f"{shown}: is empty")
    magic, codec = MAGIC.get(path.suffix.lower(), (b"", ""))
    if not head.startswith(magic):
        raise Invalid(f"{shown}: is not {codec}-compressed, as its extension says")


@contextmanager
def about(path: Path, shown: str) -> Iterator[None]:
    """Errors reading `path` as its reason, prefixed with the file as `shown` (never a path the caller
    must not see, even where the engine's message quotes it): bad input, also when the engine calls a
    corrupt or cut-off compressed stream an I/O error."""
    try:
        yield
    except Invalid as exc:
        engine = str(exc.__cause__ or "")
        reason = CSV_REASONS.search(engine)
        if "Error when sniffing file" in engine:
            raise Invalid(f"{shown}: is not RFC 4180 CSV (fields separated by commas, quoted with \" and a quote "
                          "inside doubled): a quote that never closes, or rows of different lengths?") from exc
        message = f"{exc}{f': {reason[0]}' if reason else ''}".replace(str(path), shown)
        raise Invalid(f"{shown}: {message}") from exc
    except Storage as exc:
        if path.suffix.lower() not in MAGIC or not any(word in str(exc) for word in CODEC_ERRORS):
            raise
        reason = str(exc).split("\n")[0].split("IO Error: ")[-1].replace(f": {path}", "")
        raise Invalid(f"{shown}: is corrupt or cut off ({reason.replace(str(path), shown)})") from exc


def ingest_file(store: DuckDBEventStore, path: Path, project: str, *, restore: bool = False,
                name: str | None = None) -> int:
    """Insert every event of `path` into `project`; returns how many were new.

    Required columns: event, distinct_id, timestamp (ISO 8601; naive means UTC). Optional: uuid
    (a missing one is derived from the event's content, so re-ingesting a file never duplicates)
    and properties (a JSON object). Any other column becomes a property. With `restore` (a
    retention archive ingested back), an `inserted_at` column is kept, up to now; otherwise events
    are stamped now, whatever the file says (a client must not place events in windows gone by). A `project_id` column is
    ignored: events always go to the project named by the caller. Errors name the file `name`
    (default its path), also where DuckDB's own message quotes the path: the API's spool file is
    a server path its callers must not see.
    """
    path = Path(path)
    shown = name or str(path)
    check_file(path, shown)
    reader = reader_for(path)
    with about(path, shown):
        described = store.execute(f"DESCRIBE SELECT * FROM {reader}", {"path": str(path)}).fetchall()
    columns = [row[0] for row in described]
    types = {row[0]: row[1] for row in described}

    def text(name: str) -> str:
        """A column as text: JSON strings unquoted, everything else as written."""
        col = f'"{_identifier(name)}"'
        return f"({col} ->> '$')" if types[name] == "JSON" else f"CAST({col} AS VARCHAR)"

    missing = [c for c in REQUIRED if c not in columns]
    if missing and columns == ["json"] and types["json"] == "JSON":  # DuckDB's name for values that are no objects
        raise Invalid(f"{shown}: holds no event objects (an empty array, or values that are not objects)")
    if missing:
        raise Invalid(f"{shown}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}")
    extra = [c for c in columns if c not in KNOWN]
    props = "CAST(properties AS JSON)" if "properties" in columns else "'{}'::JSON"
    params: dict[str, object] = {"path": str(path), "project": project}
    if extra:
        pairs = []
        for i, name in enumerate(extra):
            params[f"k{i}"] = name
            pairs.append(f'$k{i}, "{_identifier(name)}"')
        props = f"json_merge_patch(coalesce({props}, '{{}}'), json_object({', '.join(pairs)}))"
    # the project is part of a derived uuid: two projects' identical events are two events
    content = "md5(concat_ws(chr(31), $project, event, distinct_id, CAST(ts AS VARCHAR), CAST(props AS VARCHAR)))"
    uuid = f"coalesce(CAST(uuid AS UUID), CAST({content} AS UUID))" if "uuid" in columns else f"CAST({content} AS UUID)"
    keep = restore and "inserted_at" in columns
    # NaN and Infinity are refused, not stored as null: a value silently changed is data lost, and a
    # bad file is refused whole with its reason, like any other (see README, Ingest).
    bad_property = (f"coalesce('key \"' || nullif(regexp_extract(CAST(props AS VARCHAR), '{NAMED_NON_FINITE}', 1), '') "
                    "|| '\"', 'a property')")
    select = f"""
        WITH raw AS (
            SELECT {text("event")} AS event, {text("distinct_id")} AS distinct_id, {text("timestamp")} AS ts_text,
                   CAST({text("timestamp")} AS TIMESTAMPTZ) AS ts, coalesce(json({props}), '{{}}'::JSON) AS props
                   {f", {text('uuid')} AS uuid" if "uuid" in columns else ""}
                   {', CAST(inserted_at AS TIMESTAMPTZ) AS stored' if keep else ""}
            FROM {reader}
        )
        SELECT {uuid} AS uuid, $project AS project_id, event, distinct_id,
               CASE WHEN NOT isfinite(ts) THEN error('timestamp ' || ts_text || ' is not a finite time')
                    WHEN regexp_matches(ts_text, '{BAD_OFFSET}') THEN error('timestamp ' || ts_text ||
                         ' has a UTC offset past RFC 3339''s: hours -23 to +23, minutes 00 to 59')
                    ELSE ts END AS "timestamp",
               CASE WHEN json_type(props) <> 'OBJECT'
                    THEN error('properties must be a JSON object, got ' || CAST(props AS VARCHAR))
                    WHEN {non_finite("CAST(props AS VARCHAR)")}
                    THEN error({bad_property} || ' holds NaN or Infinity, which JSON cannot carry: send a number, '
                               || 'null, or leave the property out')
                    ELSE props END AS properties,
               {"least(coalesce(stored, now()), now())" if keep else "now()"} AS inserted_at
        FROM raw
    """
    with about(path, shown):
        return store.insert(select, params)


def _identifier(name: str) -> str:
    """A column name from the file, safe inside double quotes."""
    return name.replace('"', '""')
