"""CSV's formula guard (`csv_formula_guard`): cells a spreadsheet would run as formulas are made text
with a leading `'`, in every string column and in header cells; off by default, CSV only."""

from __future__ import annotations

import csv
import io
import re

import pyarrow as pa
import pytest
from conftest import with_demo_events
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from service import Service, cli, create_key, wait_for

from analytics_export.bytesinks import ForwardingSink
from analytics_export.formats.csv import CsvWriter, GuardedCsvWriter
from analytics_export.models import ExportRequest, ScheduledExport

RISKY = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tstart", "\rstart", "=1", "-"]
SAFE = ["plain", "-5", "+1.5e3", "1=1", "", "'=already"]


def expected(value: str) -> str:
    """OWASP's rule as the README states it, written independently of the writer's regexes."""
    number = re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", value, flags=re.ASCII)
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") and not number else value


def written(writer_cls: type, table: pa.Table) -> list[list[str]]:
    out = io.BytesIO()
    writer = writer_cls(ForwardingSink(out), table.schema)
    for batch in table.to_batches(max_chunksize=7):
        writer.write(writer.encode(batch))
    writer.close()
    return list(csv.reader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))


cells = st.one_of(st.sampled_from(RISKY + SAFE),
                  st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
                  st.from_regex(r"[=+\-@\t\r][^\x00]{0,6}", fullmatch=True))


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(cells, cells, cells), min_size=1, max_size=40))
def test_every_string_cell_a_spreadsheet_would_run_is_made_text(rows):
    table = pa.table({"event": [r[0] for r in rows], "distinct_id": [r[1] for r in rows],
                      "timestamp": ["2026-10-01T00:00:00.000000Z"] * len(rows), "=price": [r[2] for r in rows]})
    header, *body = written(GuardedCsvWriter, table)
    assert header == ["event", "distinct_id", "timestamp", "'=price"]
    assert body == [[expected(a), expected(b), "2026-10-01T00:00:00.000000Z", expected(c)] for a, b, c in rows]
    plain_header, *plain = written(CsvWriter, table)
    assert plain_header[3] == "=price" and plain == [[a, b, "2026-10-01T00:00:00.000000Z", c] for a, b, c in rows]


def test_nulls_stay_missing_and_other_types_untouched():
    table = pa.table({"event": ["=x", None], "n": pa.array([-1, 2], pa.int64())})
    assert written(GuardedCsvWriter, table) == [["event", "n"], ["'=x", "-1"], ["", "2"]]


def test_the_guard_is_csv_only_and_schedules_carry_it():
    window = {"start_date": "2026-10-01", "end_date": "2026-10-02"}
    assert ExportRequest(**window).csv_formula_guard is False, "off by default: the seed's bytes are unchanged"
    with pytest.raises(ValueError, match="csv_formula_guard applies to CSV only"):
        ExportRequest(**window, format="parquet", csv_formula_guard=True)
    with pytest.raises(ValueError, match="csv_formula_guard applies to CSV only"):
        ScheduledExport(name="n", schedule="0 2 * * *", format="json", csv_formula_guard=True)
    spec = ScheduledExport(name="n", schedule="0 2 * * *", format="csv", csv_formula_guard=True)
    assert spec.request("id", ExportRequest(**window).start_date, ExportRequest(**window).end_date).csv_formula_guard


@pytest.mark.server
def test_api_and_cli_exports_guard_event_distinct_id_and_properties(tmp_path):
    data = with_demo_events(tmp_path / "data", 100)
    key = create_key(data, "default")
    events = [{"event": value, "distinct_id": value, "timestamp": "2027-01-15T12:00:00Z",
               "properties": {"note": value, "amount": -5}} for value in RISKY + SAFE]
    svc = Service(data, 1)
    try:
        with svc.client(key) as c:
            assert c.post("/api/events", json=events).json() == {"ingested": len(events)}
            body = {"start_date": "2027-01-15", "end_date": "2027-01-16", "format": "csv",
                    "properties": ["note", "amount"]}
            refused = c.post("/api/exports", json={**body, "format": "parquet", "csv_formula_guard": True})
            assert refused.status_code == 422 and "CSV only" in refused.json()["detail"], refused.text
            for guard in (True, False):
                done = wait_for(c, c.post("/api/exports", json={**body, "csv_formula_guard": guard})
                                .json()["id"])
                assert done["csv_formula_guard"] is guard
                text = c.get(f"/api/exports/{done['id']}/download").content.decode("utf-8")
                rows = list(csv.DictReader(io.StringIO(text, newline="")))
                by_note = {r["note"]: r for r in rows}
                assert len(rows) == len(by_note) == len(events)
                for value in RISKY + SAFE:
                    shown = expected(value) if guard else value
                    row = by_note[shown]
                    assert (row["event"], row["distinct_id"], row["note"], row["amount"]) == (shown, shown, shown, "-5")
            pulled = c.get("/api/events/export", params={"start": "2027-01-15", "end": "2027-01-16", "format": "csv",
                                                          "event": "=1", "csv_formula_guard": "true"})
            assert list(csv.reader(io.StringIO(pulled.text, newline="")))[1][:2] == ["'=1", "'=1"]
            sid = c.post("/api/schedules", json={"name": "sheet", "schedule": "0 2 * * *", "format": "csv",
                                                 "csv_formula_guard": True}).json()["schedule"]
            assert sid["csv_formula_guard"] is True
    finally:
        svc.close()
    out = tmp_path / "guarded.csv"
    cli(data, "export", "--format", "csv", "--start", "2027-01-15", "--end", "2027-01-16", "--event", "=1",
        "--csv-formula-guard", "--output", str(out))
    assert list(csv.reader(out.open(newline="")))[1][:2] == ["'=1", "'=1"]
