"""Load events from JSON Lines, CSV and Parquet files into the event store, idempotent on uuid."""

from __future__ import annotations

from pathlib import Path

from .errors import Invalid
from .sources.duckdb import DuckDBEventStore

READERS = {  # no hive partitioning: a file under date=2026-03-01/ (an archive) gains no `date` column
    ".jsonl": "read_json($path, format = 'newline_delimited', maximum_depth = 1, hive_partitioning = false)",
    ".ndjson": "read_json($path, format = 'newline_delimited', maximum_depth = 1, hive_partitioning = false)",
    ".json": "read_json($path, format = 'auto', maximum_depth = 1, hive_partitioning = false)",
    ".csv": "read_csv($path, header = true, hive_partitioning = false)",
    ".parquet": "read_parquet($path, hive_partitioning = false)",
}
REQUIRED = ("event", "distinct_id", "timestamp")
KNOWN = {"uuid", "project_id", "properties", "inserted_at", *REQUIRED}


def reader_for(path: Path) -> str:
    """The DuckDB table function that reads `path`, chosen by extension (`.gz`/`.zst` allowed for text)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in READERS or (ext == ".parquet" and path.suffix.lower() != ".parquet"):
        raise Invalid(f"{path}: cannot ingest {ext or 'a file without extension'}; use .jsonl, .json, .csv or .parquet")
    return READERS[ext]


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

    def failed(exc: Invalid) -> Invalid:
        return Invalid(f"{shown}: {str(exc).replace(str(path), shown)}")

    if not path.is_file():
        raise Invalid(f"{shown}: no such file")
    reader = reader_for(path)
    try:
        described = store.execute(f"DESCRIBE SELECT * FROM {reader}", {"path": str(path)}).fetchall()
    except Invalid as exc:
        raise failed(exc) from exc
    columns = [row[0] for row in described]
    types = {row[0]: row[1] for row in described}

    def text(name: str) -> str:
        """A column as text: JSON strings unquoted, everything else as written."""
        col = f'"{_identifier(name)}"'
        return f"({col} ->> '$')" if types[name] == "JSON" else f"CAST({col} AS VARCHAR)"

    missing = [c for c in REQUIRED if c not in columns]
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
    select = f"""
        WITH raw AS (
            SELECT {text("event")} AS event, {text("distinct_id")} AS distinct_id,
                   CAST({text("timestamp")} AS TIMESTAMPTZ) AS ts, coalesce(json({props}), '{{}}'::JSON) AS props
                   {f", {text('uuid')} AS uuid" if "uuid" in columns else ""}
                   {', CAST(inserted_at AS TIMESTAMPTZ) AS stored' if keep else ""}
            FROM {reader}
        )
        SELECT {uuid} AS uuid, $project AS project_id, event, distinct_id, ts AS "timestamp",
               CASE WHEN json_type(props) = 'OBJECT' THEN props
                    ELSE error('properties must be a JSON object, got ' || CAST(props AS VARCHAR)) END AS properties,
               {"least(coalesce(stored, now()), now())" if keep else "now()"} AS inserted_at
        FROM raw
    """
    try:
        return store.insert(select, params)
    except Invalid as exc:
        raise failed(exc) from exc


def _identifier(name: str) -> str:
    """A column name from the file, safe inside double quotes."""
    return name.replace('"', '""')
