"""The embedded event store: a DuckDB file read as Arrow batches, with every filter bound as a parameter."""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import duckdb

from ..errors import Invalid, OutOfMemory, Storage
from ..enums import FilterOperator
from ..models import ExportFilter
from ..private import MODE, companion, create_private_dir
from . import NON_FINITE_HINT, READ_MEMORY_MB, EventQuery, Selection, finite, utc_strftime
from .protect import Protection

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS events (
    uuid UUID NOT NULL,
    project_id VARCHAR NOT NULL,
    event VARCHAR NOT NULL,
    distinct_id VARCHAR NOT NULL,
    "timestamp" TIMESTAMPTZ NOT NULL,
    properties JSON NOT NULL,
    inserted_at TIMESTAMPTZ NOT NULL
)
"""

FACTS_SQL = "CREATE TABLE IF NOT EXISTS store_facts (name VARCHAR PRIMARY KEY)"
"""What is known of the whole store, one row a fact."""
FINITE = "properties hold no NaN or Infinity"

INSERTS = threading.Lock()
"""One insert at a time in this process: two at once (a client's retried POST while the first still
runs) would each miss the other's uuids, as nothing in the table is unique, and store an event
twice. Only one process can write the file anyway, so no writes are lost to this."""

TIME_COLUMNS = {"timestamp": '"timestamp"', "inserted_at": "inserted_at"}
NUMBER_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"
COMPARISONS = {
    FilterOperator.EQ: "=",
    FilterOperator.GT: ">",
    FilterOperator.GTE: ">=",
    FilterOperator.LT: "<",
    FilterOperator.LTE: "<=",
}
NEGATIONS = {
    FilterOperator.NEQ: FilterOperator.EQ,
    FilterOperator.NOT_CONTAINS: FilterOperator.CONTAINS,
    FilterOperator.NOT_IN: FilterOperator.IN,
    FilterOperator.IS_NOT_SET: FilterOperator.IS_SET,
}


IN_LIST_MB = 16
"""More per in/not_in filter: each is a hash join on a bound list (9 of them ran out at 128MB, 5 did not)."""
CALL_SITE_KB = 512
"""More per selected property and filter: DuckDB's JSON functions hold memory per call site (200
properties and 100 filters ran at 128MB, 4x faster at 192MB)."""


PROTECTION_MB = 32
"""What privacy rules' functions (HMAC, JSON patches) hold outside DuckDB's cap, which their query's cap
gives back: 5M events with the bench's policy (pseudonymised distinct_id, a denied and a masked property)
peaked 30-45 MB above the same export without it, at the same cap."""
PROTECTED_MB = 64
"""The least cap under privacy rules: Avro's 48MB with that policy ran out of memory; 56MB did not."""


def memory_for(query: EventQuery) -> str:
    """The memory cap `query` needs: its `read_memory_mb` (less PROTECTION_MB under privacy rules, at
    least PROTECTED_MB), more for its in-lists and JSON call sites."""
    lists = sum(f.operator in (FilterOperator.IN, FilterOperator.NOT_IN) for f in query.filters)
    sites = len(query.filters) + len(query.properties or ())
    base = query.read_memory_mb
    if query.protection is not None:
        base = max(base - PROTECTION_MB, PROTECTED_MB)
    return f"{base + IN_LIST_MB * lists + CALL_SITE_KB * sites // 1024}MB"


def json_path(name: str) -> str:
    """JSON path of a top-level key; names are validated plain keys, so quoting is safe."""
    return f'$."{name}"'


class SqlBuilder:
    """Collects SQL fragments and their bound parameters in order."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def bind(self, value: Any) -> str:
        """A numbered placeholder (`$n`) for `value`; the text may be repeated without rebinding."""
        self.params.append(value)
        return f"${len(self.params)}"

    def prop(self, name: str) -> str:
        return f"json_extract(properties, {self.bind(json_path(name))})"

    def filtered(self, filters: tuple[ExportFilter, ...]) -> list[str]:
        """SQL conditions, each true exactly when an event matches its filters (never NULL).

        DuckDB's JSON functions hold memory per call site (10 filters of 3 calls each took 160 MB; 50 ran
        out of 256 MB), and it inlines a subquery's columns into every condition that reads them. So
        each event's filtered properties are read once, as a list of types and a list of texts handed to
        one lambda that tests every scalar filter; an in-list costs one hash lookup against its bound
        list (a subquery, which a lambda cannot hold)."""
        lists = [f for f in filters if f.operator in (FilterOperator.IN, FilterOperator.NOT_IN)]
        conditions = [self.in_list_condition(f) for f in lists]
        scalar = [f for f in filters if f not in lists]
        if scalar:
            names = list(dict.fromkeys(f.property for f in scalar))
            paths = f"{self.bind([json_path(n) for n in names])}::VARCHAR[]"
            slots = {n: (f"f.t[{i}]", f"f.s[{i}]") for i, n in enumerate(names, 1)}
            tests = " AND ".join(self.test(f, *slots[f.property]) for f in scalar)
            conditions.append(f"list_transform([{{'t': json_type(properties, {paths}), "
                              f"'s': json_extract_string(properties, {paths})}}], lambda f: {tests})[1]")
        return conditions

    def test(self, f: ExportFilter, kind: str, text: str) -> str:
        """True when `f` holds for a property whose JSON type is `kind` (NULL when missing) and whose
        value is `text` (a string raw, else its JSON text): numbers compare numerically with numbers,
        strings lexically with strings, booleans by equality."""
        if f.operator in NEGATIONS:
            return f"NOT {self.test(f.model_copy(update={'operator': NEGATIONS[f.operator]}), kind, text)}"
        if f.operator is FilterOperator.IS_SET:
            return f"coalesce({kind} <> 'NULL', false)"
        if f.operator is FilterOperator.CONTAINS:
            return f"coalesce({kind} = 'VARCHAR' AND contains({text}, {self.bind(f.value)}), false)"
        if f.operator is FilterOperator.REGEX:
            return f"coalesce({kind} = 'VARCHAR' AND regexp_matches({text}, {self.bind(f.value)}), false)"
        op, value = COMPARISONS[f.operator], f.value
        if isinstance(value, bool):
            test = f"{kind} = 'BOOLEAN' AND TRY_CAST({text} AS BOOLEAN) {op} {self.bind(value)}"
        elif isinstance(value, (int, float)):
            test = f"{kind} IN {NUMBER_TYPES} AND TRY_CAST({text} AS DOUBLE) {op} {self.bind(float(value))}"
        else:
            test = f"{kind} = 'VARCHAR' AND {text} {op} {self.bind(value)}"
        return f"coalesce({test}, false)"

    def in_list_condition(self, f: ExportFilter) -> str:
        """An `in` or `not_in` filter: the property equals one of the values (as `test` compares `eq`)."""
        path = self.bind(json_path(f.property))
        kind, text = f"json_type(properties, {path})", f"json_extract_string(properties, {path})"
        values: list = f.value  # type: ignore[assignment]
        strings = [x for x in values if isinstance(x, str)]
        flags = [x for x in values if isinstance(x, bool)]
        numbers = [float(x) for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)]
        tests = []
        if strings:
            tests.append(f"({kind} = 'VARCHAR' AND {self.in_list(text, strings, 'VARCHAR')})")
        if numbers:
            tests.append(f"({kind} IN {NUMBER_TYPES} AND {self.in_list(f'TRY_CAST({text} AS DOUBLE)', numbers, 'DOUBLE')})")
        if flags:
            tests.append(f"({kind} = 'BOOLEAN' AND {self.in_list(f'TRY_CAST({text} AS BOOLEAN)', flags, 'BOOLEAN')})")
        matched = f"coalesce({' OR '.join(tests)}, false)"
        return f"NOT {matched}" if f.operator is FilterOperator.NOT_IN else matched

    def in_list(self, expr: str, values: list[Any], sql_type: str) -> str:
        """`expr` is in `values`: one bound list and one hash lookup, whatever the list's length (a chain
        of ORs of 20,000 values took DuckDB's planner 2 GB)."""
        return f"{expr} IN (SELECT unnest({self.bind(values)}::{sql_type}[]))"

    def projection(self, query: EventQuery, extracted: list[str]) -> list[str]:
        """The output columns; columns they read from a subquery (selected properties, each event's
        parsed once for all of them: a JSON function per property ran out of memory at 60) are
        appended to `extracted`."""
        ts = utc_strftime('"timestamp"') if query.text_timestamps else '"timestamp"'
        protect = query.protection or Protection()
        cols = ["event", f"{protect.distinct_id(self.bind)} AS distinct_id", ts]
        names = query.properties or ()
        paths = f"{self.bind([json_path(n) for n in names])}::VARCHAR[]" if names else ""
        if query.property_columns:
            # a string raw, JSON null as `null`, any other value as its JSON text; NULL when absent
            extracted.append(f"list_transform([{{'t': json_type(properties, {paths}), 's': json_extract_string("
                             f"properties, {paths})}}], lambda f: list_transform(range(1, {len(names) + 1}), "
                             "lambda i: CASE WHEN f.t[i] = 'NULL' THEN 'null' ELSE f.s[i] END))[1] AS __texts")
            for i, name in enumerate(names):
                cols.append(f"{protect.column(self.bind, name, lambda: f'__texts[{i + 1}]')} AS p{i}")
        elif query.properties is None and query.protection is None:
            cols.append("CAST(properties AS VARCHAR) AS properties")
        elif query.properties is None:
            # TRY_CAST: a row whose text is not JSON leaves with `{}`, and no error quotes its content
            patched = protect.object(self.bind, "TRY_CAST(properties AS JSON)", self.prop)
            cols.append(f"coalesce(CAST({patched} AS VARCHAR), '{{}}') AS properties")
        else:
            extracted.append(f"json_extract(properties, {paths}) AS __values")
            pairs = ", ".join(f"{self.bind(name)}, {protect.member(self.bind, name, lambda: f'__values[{i + 1}]')}"
                              for i, name in enumerate(names))
            cols.append(f"CAST(json_object({pairs}) AS VARCHAR) AS properties")
        cols += [{"uuid": "CAST(uuid AS VARCHAR) AS uuid", "inserted_at": "inserted_at"}[c] for c in query.ids]
        return cols

    def select(self, query: EventQuery, columns: list[str] | None = None, more: tuple[str, ...] = ()) -> str:
        """The query's SELECT (its `columns` if given, else its projection), with the conditions `more` added."""
        extracted: list[str] = []
        cols = columns if columns is not None else self.projection(query, extracted)
        where = [
            f"project_id = {self.bind(query.project)}",
            f'{TIME_COLUMNS[query.time_field]} >= {self.bind(query.start)}',
            f'{TIME_COLUMNS[query.time_field]} < {self.bind(query.end)}',
        ]
        if query.inserted_before is not None:
            where.append(f"inserted_at < {self.bind(query.inserted_before)}")
        if query.event_time is not None:
            where.append(f'"timestamp" >= {self.bind(query.event_time[0])}')
            where.append(f'"timestamp" < {self.bind(query.event_time[1])}')
        if query.events:
            where.append(self.in_list("event", list(query.events), "VARCHAR"))
        where += self.filtered(query.filters)
        if query.protection is not None:
            where += query.protection.where(self.bind)
        where += [f"({condition})" for condition in more]
        time = TIME_COLUMNS[query.time_field]
        if query.after_uuid is not None:  # with `time >= start` above: (time, uuid) > (start, after_uuid)
            where.append(f"({time} > {self.bind(query.start)} OR CAST(uuid AS VARCHAR) > {self.bind(query.after_uuid)})")
        text = f"SELECT {', '.join(cols)} FROM events WHERE {' AND '.join(where)}"
        if extracted:
            text = (f"SELECT {', '.join(cols)} FROM (SELECT *, {', '.join(extracted)} FROM events "
                    f"WHERE {' AND '.join(where)}) AS events")
        if query.order and columns is None:
            text += f" ORDER BY {', '.join(query.order)}"
        if query.ordered and columns is None:
            text += f" ORDER BY {time}, CAST(uuid AS VARCHAR)" + (f" LIMIT {int(query.limit)}" if query.limit else "")
        return text


class DuckDBEventStore:
    """Events in one DuckDB file; exports open it read-only so several can run at once."""

    def __init__(self, path: Path, *, read_only: bool = True, memory_limit: str | None = None, threads: int = 2,
                 wait: float = 30.0):
        """`memory_limit` defaults, for reading, to what each query needs (`memory_for`), and to 1GB for
        writing (de-duplicating an ingest hashes every uuid). DuckDB admits one writer or many readers: opening waits up to `wait` seconds
        for the other side to finish."""
        self.fixed_memory = memory_limit is not None or not read_only
        memory_limit = memory_limit or (f"{READ_MEMORY_MB}MB" if read_only else "1GB")
        self.memory = memory_limit
        self.threads = self.running_threads = threads
        self.path = Path(path)
        self.readers: list[pa.RecordBatchReader] = []
        if read_only and not self.path.exists():
            DuckDBEventStore(self.path, read_only=False, threads=threads).close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not read_only and not self.path.exists()
        # DuckDB spills big sorts and joins to PATH.tmp/, made 0755 with 0644 files when it makes it itself,
        # and removed when it did; one made beforehand 0700 is used as it is, and stays
        create_private_dir(Path(f"{self.path}.tmp"))
        # Unordered scans halve time and memory; rows come in storage order, which the README says.
        config = {"memory_limit": memory_limit, "threads": threads, "preserve_insertion_order": False}
        if read_only:  # a reader's blocks come from a pool kept for the connection's life instead of
            # being freed and faulted in again under the cap: 5M to Parquet, 25% fewer page faults, 13% less
            # CPU. Made at opening: grown later by SET (to fit each query's cap), 5M to snappy Parquet peaked
            # 20-25 MB higher (253-257 MB against 230-234 MB), and no lower for a smaller cap (CSV)
            config["block_allocator_memory"] = memory_limit
        self.con = connect_waiting(self.path, read_only, config, wait)
        if created:  # DuckDB refuses a file made empty beforehand; this one holds no event yet
            os.chmod(self.path, MODE)
        self.con.execute("SET TimeZone = 'UTC'")  # session options, not config ones
        # for `progress`, from the start of a query; nothing is printed
        self.con.execute("SET enable_progress_bar = true")
        self.con.execute("SET enable_progress_bar_print = false")
        self.con.execute("SET progress_bar_time = 0")
        if not read_only:
            for attempt in range(3):  # two first connections of one process may both create the tables
                try:
                    self.con.execute(SCHEMA_SQL)
                    self.con.execute(FACTS_SQL)
                    if not self.has_fact(FINITE):
                        self.make_finite()
                    break
                except duckdb.TransactionException:
                    if attempt == 2:
                        raise
            self.private_wal()
        self.finite = self.has_fact(FINITE)
        """Whether every stored `properties` is strict JSON, so exports need not look for NaN in them."""

    def has_fact(self, name: str) -> bool:
        try:
            return bool(self.con.execute("SELECT count(*) FROM store_facts WHERE name = ?", [name]).fetchall()[0][0])
        except duckdb.CatalogException:  # a store from before facts were kept, opened read-only
            return False

    def make_finite(self) -> None:
        """Once per store, the first time it is opened for writing: NaN and Infinity that it took before
        ingest refused them (JSON has no such numbers) become null where they are stored, and the store
        records that its properties are finite. Ingest keeps them so; exports then skip the search."""
        found = f"regexp_matches(CAST(properties AS VARCHAR), '{NON_FINITE_HINT}')"
        self.con.execute("BEGIN TRANSACTION")
        try:
            # only the rows that hold one (legacy ones at most); read before the update writes
            rows = self.con.sql(f"SELECT uuid, CAST(properties AS VARCHAR) AS properties FROM events WHERE {found}")
            for batch in rows.to_arrow_table().to_batches(16_384):
                self.con.register("fixed", finite(batch))
                self.con.execute("UPDATE events SET properties = fixed.properties FROM fixed WHERE events.uuid = fixed.uuid")
                self.con.unregister("fixed")
            # ON CONFLICT: another connection of this process may have recorded it first
            self.con.execute("INSERT INTO store_facts VALUES (?) ON CONFLICT DO NOTHING", [FINITE])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def private_wal(self) -> None:
        """The write-ahead log, which DuckDB deletes at each checkpoint and creates afresh 0644 at the
        next write, made beforehand with the store file's mode: DuckDB writes into it as it finds it.
        Called after every write of this connection (a write may have checkpointed)."""
        companion(self.path, ".wal")

    def fit_memory(self, query: EventQuery) -> None:
        """Cap DuckDB's memory for `query` (`memory_for`), unless the cap was set when the store opened."""
        if not self.fixed_memory and self.memory != (wanted := memory_for(query)):
            self.execute(f"SET memory_limit = '{wanted}'", [])
            self.memory = wanted

    def batches(self, query: EventQuery, batch_size: int) -> pa.RecordBatchReader:
        self.fit_memory(query)
        sql = SqlBuilder()
        text = sql.select(query)
        with translated_errors():  # the stream's first chunk runs here: its errors are the query's
            reader = self._relation(text, sql.params).to_arrow_reader(batch_size)
        self.readers.append(reader)
        return _renamed(reader, query.schema, not query.property_columns and not self.finite)

    def copy(self, query: EventQuery, select: str, options: str, path: str) -> int:
        """Have DuckDB write the query's rows itself: `COPY (SELECT {select} FROM rows) TO path ({options})`,
        `rows` holding the query's columns as c0, c1, ...; returns how many rows it wrote. Only for a
        finite store (no NaN to scrub); `interrupt` stops it from another thread, `progress` tells how far."""
        text, params = self.rows_select(query, select)
        return int(self.execute(f"COPY ({text}) TO '{path}' ({options})", params).fetchall()[0][0])

    def lines(self, query: EventQuery, select: str, batch_rows: int,
              threads: int | None = None) -> pa.RecordBatchReader:
        """`SELECT {select} FROM rows` (as `copy`), one text column, as an Arrow stream of `batch_rows`,
        on at most `threads` of the store's threads."""
        with translated_errors():
            reader = self._relation(*self.rows_select(query, select), threads).to_arrow_reader(batch_rows)
        self.readers.append(reader)
        return reader

    def rows_select(self, query: EventQuery, select: str) -> tuple[str, list[Any]]:
        """`SELECT {select} FROM rows`, `rows` holding the query's columns as c0, c1, ..., and its
        parameters; the memory cap fitted to the query first."""
        self.fit_memory(query)
        sql = SqlBuilder()
        names = ", ".join(f"c{i}" for i in range(len(query.names)))
        return f"SELECT {select} FROM ({sql.select(query)}) AS rows({names})", sql.params

    def progress(self) -> float | None:
        """How far the running query is, 0 to 1 (None when DuckDB cannot tell)."""
        done = self.con.query_progress()
        return done / 100 if done >= 0 else None

    def interrupt(self) -> None:
        """Stop the running query: it raises in its thread."""
        self.con.interrupt()

    def count(self, query: EventQuery) -> int:
        sql = SqlBuilder()
        text = sql.select(query, ["count(*)"])
        return int(self.execute(text, sql.params).fetchall()[0][0])

    def estimate(self, query: EventQuery) -> int:
        return self.count(replace(query, events=(), filters=()))

    def grouped(self, query: EventQuery, keys: list[str]) -> dict[tuple, int]:
        sql = SqlBuilder()
        text = sql.select(query, [*keys, "count(*)"]) + f" GROUP BY {', '.join(map(str, range(1, len(keys) + 1)))}"
        return {tuple(row[:-1]): row[-1] for row in self.execute(text, sql.params).fetchall()}

    def select(self, query: EventQuery, selections: list[Selection]) -> Iterator[tuple[int, pa.RecordBatch]]:
        self.fit_memory(query)
        for index, selection in enumerate(selections):
            sql = SqlBuilder()
            reader = self._relation(selected(sql, query, selection), sql.params).to_arrow_reader(65_536)
            try:
                with translated_errors():
                    for batch in reader:
                        yield index, batch
            finally:  # the connection runs nothing else while a result is open
                reader.close()

    def is_empty(self) -> bool:
        return not self.execute("SELECT count(*) FROM events", []).fetchall()[0][0]

    def day_counts(self, project: str, before: datetime) -> list[tuple[date, int]]:
        """Events per UTC day of `project` with a timestamp before `before`, oldest first."""
        rows = self.execute('SELECT CAST("timestamp" AS DATE) AS d, count(*) FROM events WHERE project_id = $1 '
                            'AND "timestamp" < $2 GROUP BY d ORDER BY d', [project, before]).fetchall()
        return [(d, int(n)) for d, n in rows]

    def delete_window(self, project: str, start: datetime, end: datetime, inserted_before: datetime,
                      expected: int) -> int:
        """Delete the project's events with a timestamp in [start, end) stored before `inserted_before`,
        in one transaction that commits only if there were exactly `expected`; returns how many there were."""
        self.execute("BEGIN TRANSACTION", [])
        try:
            found = int(self.execute('DELETE FROM events WHERE project_id = $1 AND "timestamp" >= $2 AND '
                                     '"timestamp" < $3 AND inserted_at < $4',
                                     [project, start, end, inserted_before]).fetchall()[0][0])
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.execute("COMMIT" if found == expected else "ROLLBACK", [])
        self.private_wal()
        return found

    def insert(self, select_sql: str, params: list[Any] | dict[str, Any] | None = None) -> int:
        """Insert rows of `select_sql` (the events columns), skipping uuids already stored; returns rows added."""
        text = (
            f"INSERT INTO events SELECT * FROM (SELECT DISTINCT ON (uuid) * FROM ({select_sql})) AS s "
            "WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.uuid = s.uuid AND e.project_id = s.project_id) "
            'ORDER BY "timestamp"'  # rows stored in time order: a window's scan skips other row groups
        )
        with INSERTS:
            try:
                return int(self.execute(text, params or []).fetchall()[0][0])
            finally:
                self.private_wal()

    def _relation(self, text: str, params: list[Any], threads: int | None = None) -> duckdb.DuckDBPyRelation:
        """`text` as a relation, run on at most `threads` of the store's threads (None: all)."""
        self._ready(threads)
        with translated_errors():
            return self.con.sql(text, params=params)

    def execute(self, text: str, params: list[Any] | dict[str, Any]) -> duckdb.DuckDBPyConnection:
        """Run SQL with bound parameters on all the store's threads; DuckDB errors come back as ours."""
        self._ready(None)
        with translated_errors():
            return self.con.execute(text, params)

    def _ready(self, threads: int | None) -> None:
        """Before a query: the streams handed out before closed, and DuckDB's threads set to `threads`
        (a cap holds for the one query that asked for it)."""
        self._close_readers()
        if (wanted := min(threads or self.threads, self.threads)) != self.running_threads:
            with translated_errors():
                self.con.execute(f"SET threads = {int(wanted)}")
            self.running_threads = wanted

    def _close_readers(self) -> None:
        """Close the result streams handed out before: the connection runs one query at a time, and one
        left open (an export that failed or stopped early, a stream an error's traceback still holds)
        would refuse the next query, or at `close` keep the file's lock from the next connection."""
        for reader in self.readers:
            reader.close()
        self.readers.clear()

    def close(self) -> None:
        self._close_readers()
        with OPENING:
            self.con.close()


def selected(sql: SqlBuilder, query: EventQuery, selection: Selection) -> str:
    """The SQL of `selection` over `query`'s events."""
    text = sql.select(query, list(selection.columns), selection.where)
    if selection.group:
        text += f" GROUP BY {', '.join(map(str, range(1, selection.group + 1)))}"
    return text


OPENING = threading.Lock()
"""Held while a connection opens or closes. Closing the last connection of a store closes its file, and
POSIX drops every lock this process holds on a file when any descriptor of it closes: a connection
opened meanwhile by another thread (a new instance of the store) lost its lock that way, so another
process's writer got in while this one read a stale copy (a stream skipped committed events)."""


def connect_waiting(path: Path, read_only: bool, config: dict, wait: float) -> duckdb.DuckDBPyConnection:
    """Connect, retrying while another connection holds the file in the other mode."""
    deadline, pause = time.monotonic() + wait, 0.02
    while True:
        try:
            with OPENING:
                return duckdb.connect(str(path), read_only=read_only, config=config)
        except (duckdb.IOException, duckdb.ConnectionException, duckdb.ResourceInUseException) as exc:
            # another process holds the lock, or this one has the file open in the other mode
            held = any(sign in str(exc) for sign in ("lock", "different configuration", "already attached"))
            if not held or time.monotonic() >= deadline:
                busy = " is busy: another process or connection holds it" if held else ""
                raise Storage(f"cannot open event store {path}{busy} ({exc})") from exc
        except duckdb.Error as exc:
            raise Storage(f"cannot open event store {path}: {exc}") from exc
        time.sleep(pause)
        pause = min(pause * 2, 0.05)  # short waits: a stream's read and an ingest take turns many times a second


@contextmanager
def translated_errors() -> Iterator[None]:
    """DuckDB errors as ours: bad input (a regex RE2 rejects, a malformed file) is Invalid."""
    try:
        yield
    except (duckdb.InvalidInputException, duckdb.ConversionException, duckdb.ConstraintException) as exc:
        raise Invalid(quoted_out(str(exc).split("\n")[0].replace("Invalid Input Error: ", "invalid input: "))) from exc
    except duckdb.OutOfMemoryException as exc:
        raise out_of_memory(exc) from exc
    except duckdb.Error as exc:
        raise Storage(quoted_out(f"event store query failed: {exc}")) from exc


def out_of_memory(exc: Exception) -> OutOfMemory:
    return OutOfMemory(f"the event store ran out of its memory cap ({str(exc).splitlines()[0]}): set "
                       "ANALYTICS_EXPORT_DUCKDB_MEMORY_LIMIT higher, or select fewer properties and filters")


def quoted_out(message: str) -> str:
    """An error without the data DuckDB quotes in it (`Input: "..."`): events stay out of errors and logs."""
    return re.sub(r'(?s)\s*Input: ".*', "", message)


def _renamed(reader: pa.RecordBatchReader, schema: pa.Schema, scrub: bool) -> pa.RecordBatchReader:
    """The same stream under the query's column names (SQL aliases are positional, never user text);
    with `scrub`, NaN and Infinity in the `properties` JSON made null."""
    import pyarrow as pa  # here: a file the engine writes needs none

    def gen() -> Iterator[pa.RecordBatch]:
        with translated_errors():
            try:
                for batch in reader:
                    batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
                    yield finite(batch) if scrub else batch
            except OSError as exc:  # DuckDB's error as the Arrow stream passes it on (out of memory, say)
                if str(exc).startswith("Out of Memory Error"):
                    raise out_of_memory(exc) from exc
                raise Storage(f"event store query failed: {str(exc).splitlines()[0]}") from exc

    return pa.RecordBatchReader.from_batches(schema, gen())
