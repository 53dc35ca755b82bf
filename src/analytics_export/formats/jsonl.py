"""JSON Lines: one object per line, `properties` nested, timestamps RFC 3339 UTC; encoded by DuckDB."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..enums import Compression
from ..sources import utc_strftime
from . import BatchSQL, Copied, Writer, is_json, string_bytes

if TYPE_CHECKING:
    import pyarrow as pa


class JsonLinesWriter(Writer):
    text_timestamps = True
    prefix_sql = "''"  # SQL text put before each row's JSON
    suffix_sql = "chr(10)"  # and after it
    copied_suffix_sql = "''"  # after each row's JSON when the engine writes it, before its newline
    read_memory_mb = 64  # the engine's lines pass through Arrow here. 5M events peaked at 300 MB at 128MB;
    # at 96MB 270 MB, but 50M at 301-306 MB (DuckDB's metadata of a larger table adds 25-35 MB to every
    # format); here 240-246 MB and 50M 283 MB, JSON 8% slower (3.9-4.2 s against 3.6-3.7 s)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        columns = {name: f'"{name}"' for name in self.schema.names}
        line = (line_sql(columns, self.prefix_sql, self.suffix_sql) if "event" in columns
                else f"{self.prefix_sql} || {object_sql(self.schema)} || {self.suffix_sql}")
        self.to_json = BatchSQL(f"SELECT {line} AS line FROM batch")

    @classmethod
    def copied(cls, names: tuple[str, ...], compression: Compression | None) -> Copied:
        """Each row's JSON text and its newline, made by the SQL the batch path runs. Uncompressed, on one
        DuckDB thread: under the read cap a second one made DuckDB flush its allocators from both threads
        (system time 2.3 s to 4.4-4.9 s), 5M lines to a file 3.5-3.7 s on one against 4.1-4.3 s on two;
        compressed, Python's compressor is the slower side and two measured 5% faster (zstd)."""
        line = line_sql({name: f"c{i}" for i, name in enumerate(names)}, "''", f"{cls.copied_suffix_sql} || chr(10)")
        return Copied(f"{line} AS line", None, threads=1 if compression is None else None)

    def encode(self, batch: pa.RecordBatch) -> memoryview:
        """Every row of `batch` as one JSON text with its separator, concatenated."""
        return string_bytes(self.to_json(batch).column(0).combine_chunks())

    def write(self, lines: memoryview) -> None:
        if lines.nbytes:
            self.sink.write(lines)

    def release(self) -> None:
        self.to_json.close()


def line_sql(columns: dict[str, str], before: str, after: str) -> str:
    """DuckDB SQL of one row's JSON object between the SQL texts `before` and `after`, from the SQL of
    each column by name (`event`, `distinct_id`, `timestamp` as RFC 3339 text, `properties` as JSON
    text, and `uuid`, `inserted_at` when there); NULL where a column is (refused on the engine's path).

    Concatenation, not to_json(struct): `properties` is already minified JSON text in every store, so it
    is spliced in as is instead of being parsed and written again (3x faster). One concat() of all the
    pieces, not a chain of `||` that makes a string at each step: 5M demo lines on one thread took 2.0-2.1 s
    against 2.7 s. The ids come after properties: an export's `include`, and a stream's uuid (its
    receiver drops a batch delivered twice)."""
    ids = {"uuid": lambda c: ["',\"uuid\":'", f"to_json({c})"],
           "inserted_at": lambda c: ["',\"inserted_at\":\"'", utc_strftime(c), "'\"'"]}
    pieces = [before, "'{\"event\":'", f"to_json({columns['event']})", "',\"distinct_id\":'",
              f"to_json({columns['distinct_id']})", "',\"timestamp\":\"'", columns["timestamp"],
              "'\",\"properties\":'", columns["properties"]]
    for name, sql in ids.items():
        if name in columns:
            pieces += sql(columns[name])
    pieces += ["'}'", after]
    used = [sql for name, sql in columns.items() if name in ("event", "distinct_id", "timestamp", "properties", *ids)]
    return f"CASE WHEN {' OR '.join(f'{sql} IS NULL' for sql in used)} THEN NULL ELSE concat({', '.join(pieces)}) END"


def object_sql(schema: pa.Schema) -> str:
    """DuckDB SQL of one row's JSON object for a derived model's rows (`derived/`), its columns in order:
    a column of JSON text (field metadata `json: text`) spliced in, a timestamp as RFC 3339 text, any
    other value by `to_json`; null as `null`."""
    import pyarrow as pa

    parts = []
    for i, field in enumerate(schema):
        column = f'"{field.name}"'
        if is_json(field):
            value = column
        elif pa.types.is_timestamp(field.type):
            value = f"""'"' || {utc_strftime(column)} || '"'"""
        else:
            value = f"CAST(to_json({column}) AS VARCHAR)"
        key = json.dumps(field.name)  # our own column names: plain keys
        parts.append(f"'{',' if i else '{'}{key}:' || coalesce({value}, 'null')")
    return f"{' || '.join(parts)} || '}}'"
