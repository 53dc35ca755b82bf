"""Who is who: the links `$identify` and `$create_alias` events make between distinct ids, and each id's
person (the smallest id of its connected component), computed in the staging DuckDB (docs/models.md)."""

from __future__ import annotations

from datetime import datetime, timezone

from ..errors import Storage
from ..sources import Selection
from ..sources.protect import Protection
from .staging import Staging

HISTORY_START = datetime(1900, 1, 1, tzinfo=timezone.utc)
"""Where a model's history is read from: the earliest instant every store holds."""

LINKED = ("CASE WHEN event = '$identify' AND json_type(properties, '$.\"$anon_distinct_id\"') = 'VARCHAR' "
          "THEN json_extract_string(properties, '$.\"$anon_distinct_id\"') "
          "WHEN event = '$create_alias' AND json_type(properties, '$.\"alias\"') = 'VARCHAR' "
          "THEN json_extract_string(properties, '$.\"alias\"') END")

LINK_COLUMNS = "a VARCHAR, b VARCHAR, linked_at TIMESTAMPTZ"
MAX_ROUNDS = 10_000


def timestamp(value: datetime) -> str:
    """A SQL literal of one of our own instants (never user text)."""
    return f"TIMESTAMPTZ '{value.astimezone(timezone.utc).isoformat()}'"


def links(before: datetime, time_column: str) -> tuple[str, Selection]:
    """The staged `links` table: (an event's distinct_id, the id it links, the event's time on
    `time_column`) for events before `before`."""
    return LINK_COLUMNS, Selection(
        ("distinct_id", LINKED, time_column),
        where=("event IN ('$identify', '$create_alias')", f"{time_column} < {timestamp(before)}"))


def resolve(staging: Staging, protection: Protection, nodes: str | None = None, before: datetime | None = None,
            table: str = "labels") -> None:
    """Fill `table(id, label)`: every id of `links` (and of the SQL `nodes`, one `id` column) with its
    person, by the links made before `before` if given. Each round takes the smallest label among an
    id's neighbours, then its label's label (so a chain of n links takes about log n rounds); it stops
    when a round changes nothing."""
    staging.run("CREATE OR REPLACE TABLE edges AS WITH l AS (SELECT a, b FROM links WHERE b IS NOT NULL AND b <> '' "
                "AND a <> b AND NOT list_contains(CAST($1 AS VARCHAR[]), b) AND (CAST($2 AS TIMESTAMPTZ) IS NULL "
                "OR linked_at < $2)) SELECT a, b FROM l UNION SELECT b, a FROM l", [list(protection.suppressed), before])
    ids = "SELECT DISTINCT a AS id FROM edges" + (f" UNION SELECT id FROM ({nodes})" if nodes else "")
    staging.run(f"CREATE OR REPLACE TABLE labels AS SELECT id, id AS label FROM ({ids})")
    for _ in range(MAX_ROUNDS):
        staging.check()
        staging.run("""CREATE OR REPLACE TABLE step AS
            WITH hop AS (SELECT e.a AS id, min(l.label) AS label FROM edges e JOIN labels l ON l.id = e.b GROUP BY e.a),
                 low AS (SELECT l.id, least(l.label, coalesce(h.label, l.label)) AS label
                         FROM labels l LEFT JOIN hop h USING (id))
            SELECT low.id, least(low.label, j.label) AS label FROM low JOIN low j ON j.id = low.label""")
        changed = staging.run("SELECT count(*) FROM step JOIN labels USING (id) WHERE step.label <> labels.label")
        done = not changed.fetchall()[0][0]
        staging.run("DROP TABLE labels")
        staging.run("ALTER TABLE step RENAME TO labels")
        if done:
            if table != "labels":
                staging.run(f"ALTER TABLE labels RENAME TO {table}")
            return
    raise Storage(f"merging ids did not settle in {MAX_ROUNDS} rounds")
