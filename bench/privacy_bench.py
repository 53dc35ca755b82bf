"""Privacy cost: one export with a typical privacy policy against the same export without one, same run.

Run from the project root:

    uv run python bench/privacy_bench.py                          # 2M events, JSON Lines and Parquet
    uv run python bench/privacy_bench.py --events 500000 --formats parquet --repeat 3
    uv run python bench/privacy_bench.py --data-dir DIR           # reuse DIR/base/events.duckdb if it has events
    uv run python bench/privacy_bench.py --keep DIR               # keep the generated data and every output in DIR

It generates N demo events (`analytics_export.demo.generate`) and adds personal data to their
properties in one DuckDB UPDATE (no Python row loop): every event gets `$ip` (IPv4) and `user_id`
(its distinct_id), a third an `email`, a third a `name`, 5% an `ssn`, and 12% a free-text `note`,
most of them holding a phone number, a card number (Luhn-valid), an order number (a card candidate
that fails Luhn) or an email address. Two data dirs share that one events file (`events_url`):

- `base/`:   no privacy policy (the baseline);
- `policy/`: a typical policy, stored with `PrivacyStore.set_policy` and `suppress`: deny `ssn`;
             redact (mask) detectors email, ipv4, phone, credit_card and the property `name`;
             pseudonymise distinct_id and `user_id`; `--suppress` (default 1,000) distinct_ids suppressed.

For each format (`--formats`, default json_lines and parquet) it runs `analytics_export.export` of the
whole range alternately without and with the policy, `--repeat` times each, every run in a fresh
process (only the export is timed, not interpreter start-up or imports; outputs are fsynced), and
keeps the fastest of each. It prints every run, then per format events/s (of the events read; the
policy run writes fewer, its suppressed users' are left out), the ratio policy seconds / baseline
seconds with PASS/FAIL against the target (< 1.30), peak RSS (VmHWM), and how long the policy
run spent in the detectors (`Redactor.json`, in the read-ahead thread beside the writer), of which
the exact path (`Redactor._exact`, a Python loop over the rows it takes, counted). The rest of the
policy (suppression, pseudonyms, names) runs inside the source's scan and is not timed apart. The first policy output of each format is checked for leaks
(an IPv4 address, an email, `ssn`, a raw distinct_id left in it). It always exits 0: it is a
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

PROJECT = "default"
RATIO_TARGET = 1.30  # policy seconds / baseline seconds must stay below this
FORMATS = ("json", "json_lines", "csv", "parquet", "avro")
CHECKED = ("json", "json_lines", "csv", "parquet")  # formats DuckDB reads back for the leak check (no Avro)
EXTENSIONS = {"json": "json", "json_lines": "jsonl", "csv": "csv", "parquet": "parquet", "avro": "avro"}

FIRST = ["Alice", "Bob", "Chloé", "David", "Emma", "Farid", "Grace", "Hiroshi", "Ines", "Jonas", "Kateřina",
         "Liam", "María", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sven", "Zoë"]
LAST = ["Smith", "Müller", "García", "Nguyen", "O'Brien", "Kowalski", "Rossi", "Tanaka", "Dubois", "Silva",
        "Andersson", "Okafor", "Cohen", "Patel", "Novák", "Hansen"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "example.co.uk", "inbox.example.io"]
PLAIN_NOTES = ["Loved the new dashboard, but the export button is hard to find.",
               "Search is slow on mobile; tried twice.", "Can we get a dark mode? 🙏",
               "The invoice total looks off by 2.50 EUR", "Great support, thanks! Ticket #4821 closed."]

# The personal data, as a JSON object merged into each event's properties (a JSON null adds nothing).
# h(x, salt): a non-negative 63-bit hash; card(p): p (15 digits) followed by its Luhn check digit.
MACROS = (
    "CREATE OR REPLACE TEMP MACRO h(x, salt) AS CAST(hash(x, salt) >> 1 AS BIGINT)",
    "CREATE OR REPLACE TEMP MACRO pick(list, x) AS list[1 + x % len(list)]",
    """CREATE OR REPLACE TEMP MACRO card(p) AS p || CAST((10 - list_sum(list_transform(range(15), lambda i:
           CASE WHEN i % 2 = 0 THEN (2 * CAST(substr(p, 15 - i, 1) AS INTEGER)) % 10
                                    + (2 * CAST(substr(p, 15 - i, 1) AS INTEGER)) // 10
                ELSE CAST(substr(p, 15 - i, 1) AS INTEGER) END)) % 10) % 10 AS VARCHAR)""",
    "CREATE OR REPLACE TEMP MACRO digits(x, n) AS lpad(CAST(x % CAST(pow(10, n) AS BIGINT) AS VARCHAR), n, '0')",
)
FIRST_NAME = "pick($first, h(distinct_id, 'f'))"
LAST_NAME = "pick($last, h(distinct_id, 'l'))"
EMAIL = (f"lower(replace({FIRST_NAME}, '''', '')) || '.' || lower(replace({LAST_NAME}, '''', '')) "
         "|| CASE WHEN h(distinct_id, 't') % 5 = 0 THEN '+' || h(distinct_id, 't') % 100 ELSE '' END "
         "|| '@' || pick($domains, h(distinct_id, 'd'))")
PHONE = """CASE h(uuid, 'pk') % 3
    WHEN 0 THEN '+1 ' || (200 + h(uuid, 'p1') % 800) || '-555-' || digits(h(uuid, 'p2'), 4)
    WHEN 1 THEN '(' || (200 + h(uuid, 'p1') % 800) || ') 555-' || digits(h(uuid, 'p2'), 4)
    ELSE '+44 20 ' || digits(h(uuid, 'p1'), 4) || ' ' || digits(h(uuid, 'p2'), 4) END"""
CARD = "card(pick(['4', '5'], h(uuid, 'c0')) || digits(h(uuid, 'c1'), 14))"
NOTE = f"""CASE (h(uuid, 'nk') >> 8) % 10
    WHEN 0 THEN 'Please call me at ' || {PHONE} || ' after 5pm'
    WHEN 1 THEN 'my number is ' || {PHONE}
    WHEN 2 THEN 'Call back: ' || {PHONE} || ', ask for ' || {FIRST_NAME}
    WHEN 3 THEN 'Wrong number on file, new one is ' || {PHONE}
    WHEN 4 THEN 'Paid with card ' || {CARD} || ' but it was declined'
    WHEN 5 THEN 'card: ' || substr({CARD}, 1, 4) || ' ' || substr({CARD}, 5, 4) || ' ' || substr({CARD}, 9, 4)
                || ' ' || substr({CARD}, 13, 4)
    WHEN 6 THEN 'Order #' || digits(h(uuid, 'o'), 13) || ' arrived late'
    WHEN 7 THEN 'Contact me: ' || {EMAIL}
    ELSE pick($notes, h(uuid, 'np')) END"""
PII_SQL = f"""
UPDATE events SET properties = CAST(json_merge_patch(properties, json_object(
    '$ip', to_json(concat_ws('.', 1 + h(uuid, 'ip') % 223, (h(uuid, 'ip') >> 8) % 256,
                             (h(uuid, 'ip') >> 16) % 256, 1 + (h(uuid, 'ip') >> 24) % 254)),
    'user_id', to_json(distinct_id),
    'email', CASE WHEN h(uuid, 'e') % 3 = 0 THEN to_json({EMAIL}) END,
    'name', CASE WHEN h(uuid, 'n') % 3 = 0 THEN to_json({FIRST_NAME} || ' ' || {LAST_NAME}) END,
    'ssn', CASE WHEN h(uuid, 's') % 20 = 0 THEN to_json(digits(h(uuid, 's1'), 3) || '-' || digits(h(uuid, 's2'), 2)
                                                        || '-' || digits(h(uuid, 's3'), 4)) END,
    'note', CASE WHEN h(uuid, 'nk') % 100 < 12 THEN to_json({NOTE}) END
)) AS JSON)
WHERE project_id = $project AND rowid >= $low AND rowid < $high
"""
UPDATE_ROWS = 500_000  # per UPDATE statement: DuckDB keeps a transaction's undo data in memory
PHONE_RE = r"\d{3}(\) |-)555-\d{4}|\+44 20 \d{4} \d{4}"  # the phones and cards of NOTE, as RE2 patterns
CARD_RE = r"\d{4} \d{4} \d{4} \d{4}|\b[45]\d{15}\b"
PII_STATS_SQL = """
SELECT count(*),
       count(*) FILTER (properties ->> '$."$ip"' IS NOT NULL),
       count(*) FILTER (properties ->> '$.email' IS NOT NULL),
       count(*) FILTER (properties ->> '$.name' IS NOT NULL),
       count(*) FILTER (properties ->> '$.ssn' IS NOT NULL),
       count(*) FILTER (properties ->> '$.note' IS NOT NULL),
       count(*) FILTER (regexp_matches(properties ->> '$.note', $phone)),
       count(*) FILTER (regexp_matches(properties ->> '$.note', $card))
FROM events WHERE project_id = $project
"""


def policy_rules() -> Any:
    """The typical policy: 5 redaction rules, one denied property, pseudonyms for distinct_id and user_id."""
    from analytics_export.privacy.rules import Detector, PrivacyRules, RedactionRule

    return PrivacyRules(
        deny_properties=["ssn"],
        redact=[RedactionRule(detector=Detector.EMAIL), RedactionRule(detector=Detector.IPV4),
                RedactionRule(detector=Detector.PHONE), RedactionRule(detector=Detector.CREDIT_CARD),
                RedactionRule(properties=["name"])],
        pseudonymize_distinct_id=True,
        pseudonymize_properties=["user_id"],
    )


# ---------------------------------------------------------------- child side: one measurement


@dataclass(frozen=True)
class Spec:
    """One measurement, passed to the child process as JSON."""

    kind: str  # baseline | policy
    fmt: str
    data_dir: str
    events_url: str
    out: str
    start: str
    end: str
    check: bool = False


@dataclass
class Result:
    kind: str
    fmt: str
    events: int = 0  # written
    seconds: float = 0.0
    bytes: int = 0
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    suppressed: int = 0
    transform_s: float = 0.0
    batches: int = 0
    detectors_s: float = 0.0
    exact_s: float = 0.0
    exact_rows: int = 0
    leaks: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (VmHWM, which starts afresh at exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def instrument(stats: dict[str, float]) -> None:
    """Time the transform's parts from outside: a perf_counter pair per batch, nothing per row."""
    from analytics_export.privacy import redaction

    def timed(cls: type, name: str, key: str, rows: bool = False) -> None:
        original = getattr(cls, name)

        def wrapper(self: Any, arg: Any, *args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(self, arg, *args, **kwargs)
            finally:
                stats[key] += time.perf_counter() - began
                stats[key + "_calls"] += 1
                if rows:
                    stats[key + "_rows"] += len(arg)

        setattr(cls, name, wrapper)

    for key in ("detectors", "exact"):
        stats[key] = stats[key + "_calls"] = stats[key + "_rows"] = 0
    timed(redaction.Redactor, "json", "detectors")
    timed(redaction.Redactor, "_exact", "exact", rows=True)


def leak_check(spec: Spec) -> dict[str, int]:
    """Rows of the policy's output still holding what the policy takes out (all should be 0)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2, "memory_limit": "512MB"})
    columns = "{'distinct_id': 'VARCHAR', 'properties': 'VARCHAR'}"
    source = {"parquet": f"read_parquet('{spec.out}')",
              "csv": f"read_csv('{spec.out}', header = true, all_varchar = true)",
              "json": f"read_json('{spec.out}', format = 'array', columns = {columns})",
              "json_lines": f"read_json('{spec.out}', format = 'newline_delimited', columns = {columns})"}[spec.fmt]
    row = con.execute(f"""
        SELECT count(*) FILTER (regexp_matches(properties, '\\b\\d{{1,3}}\\.\\d{{1,3}}\\.\\d{{1,3}}\\.\\d{{1,3}}\\b')),
               count(*) FILTER (regexp_matches(properties, '[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\\.[A-Za-z]{{2,}}')),
               count(*) FILTER (properties LIKE '%"ssn"%'),
               count(*) FILTER (distinct_id LIKE 'user\\_%' ESCAPE '\\'),
               count(*) FILTER (properties LIKE '%"user_id":"user\\_%' ESCAPE '\\'),
               count(*) FILTER (json_extract_string(properties, '$.name') <> '[REDACTED]'),
               count(*) FILTER (regexp_matches(json_extract_string(properties, '$.note'), $phone)),
               count(*) FILTER (regexp_matches(json_extract_string(properties, '$.note'), $card))
        FROM {source}""", {"phone": PHONE_RE, "card": CARD_RE}).fetchone()
    con.close()
    return dict(zip(["ipv4", "email", "ssn", "distinct_id", "user_id", "name", "phone", "card"], map(int, row)))


def run_one(spec: Spec) -> dict[str, Any]:
    """Our export() of the whole window, timed; returns a Result as a dict."""
    from analytics_export import Settings, export, project_privacy
    from analytics_export.formats import writer_class
    from analytics_export.enums import ExportFormat
    from analytics_export.models import ExportRequest

    settings = Settings(data_dir=Path(spec.data_dir), events_url=spec.events_url)
    fields = {"start_date": spec.start, "end_date": spec.end, "format": spec.fmt}
    writer_class(ExportFormat(spec.fmt))  # import the format's modules outside the timing
    project_privacy(settings, ExportRequest.model_validate(fields))  # the job store's imports and migration too
    stats: dict[str, Any] = {}
    if spec.kind == "policy":
        instrument(stats)
    rss_before = peak_rss_mb()
    began = time.perf_counter()
    result = export(settings=settings, output=spec.out, **fields)
    seconds = time.perf_counter() - began
    out = Result(spec.kind, spec.fmt, events=result.total_events, seconds=seconds, bytes=result.file_size,
                 rss_before_mb=rss_before, peak_rss_mb=peak_rss_mb())
    if spec.kind == "policy":
        if result.privacy_policy_version is None:
            raise SystemExit("the policy data dir has no privacy policy")
        out.transform_s, out.batches = stats["detectors"], int(stats["detectors_calls"])
        out.detectors_s, out.exact_s, out.exact_rows = stats["detectors"], stats["exact"], int(stats["exact_rows"])
        if spec.check:
            out.leaks = leak_check(spec)
    elif result.privacy_policy_version is not None:
        raise SystemExit("the baseline data dir has a privacy policy")
    return asdict(out)


# ---------------------------------------------------------------- parent side


def measure(spec: Spec) -> Result:
    """Run `spec` in a fresh interpreter and read its JSON line."""
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(asdict(spec))], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        message = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return Result(spec.kind, spec.fmt, error=message[:200])
    return Result(**json.loads(lines[-1]))


def event_stats(events_path: Path) -> tuple[int, datetime, datetime]:
    """How many events the store holds for the project, and a whole-day window covering them all."""
    import duckdb

    now = datetime.now(timezone.utc)
    if not events_path.exists():
        return 0, now, now
    con = duckdb.connect(str(events_path), read_only=True)
    try:
        n, low, high = con.execute(f"SELECT count(*), min(\"timestamp\"), max(\"timestamp\") FROM events "
                                   f"WHERE project_id = '{PROJECT}'").fetchone()
    except duckdb.Error:  # no events table
        return 0, now, now
    finally:
        con.close()
    if not n:
        return 0, now, now
    low, high = low.astimezone(timezone.utc), high.astimezone(timezone.utc)
    start = datetime(low.year, low.month, low.day, tzinfo=timezone.utc)
    end = datetime(high.year, high.month, high.day, tzinfo=timezone.utc) + timedelta(days=1)
    return int(n), start, end


def generate(events_path: Path, events: int) -> None:
    """N demo events, then their personal data, in DuckDB (no Python row loop)."""
    from analytics_export import Settings, open_store
    from analytics_export.demo import generate as demo_generate

    store = open_store(Settings(data_dir=events_path.parent), read_only=False)
    try:
        demo_generate(store, events, PROJECT)
        store.execute("SET memory_limit = '2GB'", [])
        for macro in MACROS:
            store.execute(macro, [])
        (rows,) = store.execute("SELECT max(rowid) + 1 FROM events", []).fetchone()
        for low in range(0, rows or 0, UPDATE_ROWS):
            store.execute(PII_SQL, {"project": PROJECT, "first": FIRST, "last": LAST, "domains": DOMAINS,
                                    "notes": PLAIN_NOTES, "low": low, "high": low + UPDATE_ROWS})
        store.execute("CHECKPOINT", [])
    finally:
        store.close()


def suppressed_ids(count: int) -> list[str]:
    """`count` demo distinct_ids spread over the whole user range (the demo skews towards low numbers)."""
    from analytics_export.demo import USERS

    return [f"user_{i * USERS // count}" for i in range(count)] if count else []


def set_policies(base: Path, policy: Path, suppress: int) -> int:
    """No policy in `base`'s job store; the typical policy and the suppression list in `policy`'s."""
    from analytics_export import Settings
    from analytics_export.connections import Sealer
    from analytics_export.privacy.rules import PrivacyRules
    from analytics_export.store.jobs import JobStore
    from analytics_export.store.policies import PrivacyStore

    versions = []
    for data_dir, rules in ((base, PrivacyRules()), (policy, policy_rules())):
        settings = Settings(data_dir=data_dir)
        jobs = JobStore.for_data_dir(settings.data_dir)
        try:
            jobs.migrate()
            store = PrivacyStore(jobs, Sealer(settings.signing_key()))
            version, current, _ = store.policy(PROJECT)
            if current != rules:
                version = store.set_policy(PROJECT, rules)
            versions.append(version)
            if rules.empty:
                store.unsuppress(PROJECT, store.suppressed(PROJECT))
            else:
                wanted = set(suppressed_ids(suppress))
                store.unsuppress(PROJECT, [i for i in store.suppressed(PROJECT) if i not in wanted])
                store.suppress(PROJECT, wanted)
                if store.suppressed_count(PROJECT) != len(wanted):
                    raise SystemExit("suppression list not as wanted")
        finally:
            jobs.engine.dispose()
    return versions[1]


def prepare_here(work: Path, events: int, suppress: int) -> dict[str, Any]:
    """Reuse `work/base/events.duckdb` if it has events, else generate them; set both dirs' policies."""
    base, policy = work / "base", work / "policy"
    events_path = base / "events.duckdb"
    n, start, end = event_stats(events_path)
    generated = None
    if not n:
        began = time.perf_counter()
        generate(events_path, events)
        generated = time.perf_counter() - began
        n, start, end = event_stats(events_path)
    import duckdb

    con = duckdb.connect(str(events_path), read_only=True)
    try:
        counts = con.execute(PII_STATS_SQL, {"project": PROJECT, "phone": PHONE_RE, "card": CARD_RE}).fetchone()
        suppressed = con.execute("SELECT count(*) FROM events WHERE project_id = $project AND distinct_id IN "
                                 "(SELECT unnest($ids))", {"project": PROJECT, "ids": suppressed_ids(suppress)}
                                 ).fetchone()[0]
    finally:
        con.close()
    version = set_policies(base, policy, suppress)
    return {"events": n, "start": start.isoformat(), "end": end.isoformat(), "generated_s": generated,
            "pii": dict(zip(["events", "$ip", "email", "name", "ssn", "note", "note_phone", "note_card"], counts)),
            "suppressed_events": suppressed, "policy_version": version}


def prepare_data(work: Path, events: int, suppress: int) -> dict[str, Any]:
    """prepare_here in a child process, so this parent stays small."""
    proc = subprocess.run([sys.executable, __file__, "--prepare", json.dumps([str(work), events, suppress])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cannot prepare the event store in {work}:\n{proc.stderr}")
    info = json.loads(proc.stdout.splitlines()[-1])
    if info["generated_s"] is None:
        log(f"reusing {info['events']:,} events in {work / 'base'}")
    else:
        log(f"generated {info['events']:,} events with personal data in {info['generated_s']:.1f}s ({work / 'base'})")
    return info


def best(runs: list[Result]) -> Result:
    """The fastest of the runs, with the highest peak RSS seen in any of them."""
    ok = [r for r in runs if r.error is None]
    if not ok:
        return runs[-1]
    fastest = min(ok, key=lambda r: r.seconds)
    return Result(**{**asdict(fastest), "peak_rss_mb": max(r.peak_rss_mb for r in ok),
                     "leaks": next((r.leaks for r in ok if r.leaks), {})})


def run_all(args: argparse.Namespace, work: Path, out: Path, info: dict[str, Any]) -> dict[str, list[Result]]:
    """Per format, baseline and policy runs alternated, `--repeat` of each."""
    runs: dict[str, list[Result]] = {}
    base = work / "base"
    for fmt in args.formats:
        for i in range(args.repeat):
            for kind in ("baseline", "policy"):
                spec = Spec(kind=kind, fmt=fmt, data_dir=str(work / ("base" if kind == "baseline" else "policy")),
                            events_url=str(base / "events.duckdb"), out=str(out / f"{kind}.{EXTENSIONS[fmt]}"),
                            start=info["start"], end=info["end"], check=kind == "policy" and i == 0 and fmt in CHECKED and not args.no_check)
                result = measure(spec)
                runs.setdefault(f"{fmt} {kind}", []).append(result)
                log(f"  {fmt:<11} {kind:<8} run {i + 1}: " + (
                    f"{result.seconds:.2f}s, {info['events'] / result.seconds / 1000:,.0f}k ev/s, "
                    f"{result.peak_rss_mb:.0f} MB" if result.error is None else f"ERROR {result.error}"))
    return runs


# ---------------------------------------------------------------- report


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate / 1000:,.0f}k"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def runs_table(runs: dict[str, list[Result]], events: int) -> str:
    rows = []
    for name, results in runs.items():
        for i, r in enumerate(results, 1):
            fmt, kind = name.split()
            if r.error is not None:
                rows.append([fmt, kind, str(i), "-", "-", "-", "-", "-", f"ERROR {r.error}"])
                continue
            rows.append([fmt, kind, str(i), f"{r.seconds:.2f}", fmt_rate(events / r.seconds), f"{r.events:,}",
                         f"{r.bytes / 1e6:,.1f}", f"{r.peak_rss_mb:.0f}",
                         f"{r.transform_s:.2f}" if kind == "policy" else ""])
    return table(["format", "run", "#", "s", "ev/s (read)", "events written", "file MB", "peak RSS MB",
                  "transform s"], rows)


def summary_table(runs: dict[str, list[Result]], formats: list[str], events: int) -> str:
    rows = []
    for fmt in formats:
        base, pol = best(runs[f"{fmt} baseline"]), best(runs[f"{fmt} policy"])
        if base.error or pol.error:
            rows.append([fmt, "-", "-", "-", "-", "-", f"ERROR {base.error or pol.error}", "-"])
            continue
        ratio = pol.seconds / base.seconds
        rows.append([fmt, f"{base.seconds:.2f}", fmt_rate(events / base.seconds), f"{pol.seconds:.2f}",
                     fmt_rate(events / pol.seconds), f"{ratio:.2f}x",
                     f"{ratio:.2f} < {RATIO_TARGET:.2f} {verdict(ratio < RATIO_TARGET)}",
                     f"{base.peak_rss_mb:.0f} / {pol.peak_rss_mb:.0f}"])
    return table(["format", "baseline s", "baseline ev/s", "policy s", "policy ev/s", "policy/baseline",
                  "target", "peak RSS MB base / policy"], rows)


def breakdown_table(runs: dict[str, list[Result]], formats: list[str], events: int) -> str:
    rows = []
    for fmt in formats:
        pol = best(runs[f"{fmt} policy"])
        if pol.error:
            continue
        share = lambda s: f"{s:.2f} ({s / pol.seconds:.0%})"
        rows.append([fmt, str(pol.batches), share(pol.detectors_s), share(pol.exact_s),
                     f"{pol.exact_rows:,} ({pol.exact_rows / events:.3%})"])
    return table(["format", "batches", "polars detectors s (% of run)", "exact path s", "exact-path rows"], rows)


def leaks_line(runs: dict[str, list[Result]], formats: list[str]) -> list[str]:
    lines = []
    for fmt in formats:
        leaks = best(runs[f"{fmt} policy"]).leaks
        if leaks:
            total = sum(leaks.values())
            detail = ", ".join(f"{k} {v:,}" for k, v in leaks.items())
            lines.append(f"{fmt}: rows still holding {detail} -> {verdict(total == 0)}")
    return lines


# ---------------------------------------------------------------- main


def default_out_dir(work: Path, keep: bool) -> Path:
    """A fresh folder on tmpfs when there is one, so timings measure the transform rather than the disk."""
    shm = Path("/dev/shm")
    if keep or not shm.is_dir() or shutil.disk_usage(shm).free < 8 << 30:
        return work / "out"
    return Path(tempfile.mkdtemp(prefix="privacy-bench-out-", dir=shm))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=2_000_000, help="demo events to generate (default 2,000,000)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=["json_lines", "parquet"], metavar="FORMAT",
                   help=f"formats to measure, of {' '.join(FORMATS)} (default json_lines parquet)")
    p.add_argument("--repeat", type=int, default=2,
                   help="runs of baseline and policy each, alternated; the fastest counts (default 2)")
    p.add_argument("--suppress", type=int, default=1000, help="distinct_ids on the suppression list (default 1,000)")
    p.add_argument("--data-dir", type=Path, help="work dir whose base/events.duckdb is reused if it has events "
                   "(else generated there and kept)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="work in DIR and keep the generated data and every output file there")
    p.add_argument("--out-dir", type=Path, metavar="DIR",
                   help="where outputs are written (default: a fresh folder in /dev/shm when it exists)")
    p.add_argument("--no-check", action="store_true", help="skip the leak check of the first policy output")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement (JSON Spec) and exit
    p.add_argument("--prepare", help=argparse.SUPPRESS)  # internal: [work, events, suppress] -> JSON stats
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(Spec(**json.loads(args.one)))), flush=True)
        return 0
    if args.prepare:
        work, events, suppress = json.loads(args.prepare)
        print(json.dumps(prepare_here(Path(work), events, suppress)), flush=True)
        return 0
    args.repeat = max(1, args.repeat)
    keep = args.keep is not None or args.data_dir is not None
    work = (args.data_dir or args.keep or Path(tempfile.mkdtemp(prefix="privacy-bench-"))).absolute()
    out = args.out_dir or default_out_dir(work, keep=args.keep is not None)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        info = prepare_data(work, args.events, args.suppress)
        events = info["events"]
        log(f"measuring {', '.join(args.formats)} over {events:,} events [{info['start'][:10]}, {info['end'][:10]}), "
            f"best of {args.repeat}; outputs in {out}")
        runs = run_all(args, work, out, info)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        if args.keep is None and args.out_dir is None:
            shutil.rmtree(out, ignore_errors=True)
    pii = info["pii"]
    share = lambda k: f"{k} {pii[k] / max(1, pii['events']):.0%}"
    print(f"\n{events:,} events; personal data in properties: {share('$ip')}, {share('email')}, {share('name')}, "
          f"{share('ssn')}, {share('note')} (with a phone {pii['note_phone'] / max(1, pii['events']):.1%}, "
          f"a Luhn-valid card {pii['note_card'] / max(1, pii['events']):.1%}), user_id 100%")
    print(f"policy (version {info['policy_version']}): deny ssn; mask email, ipv4, phone, credit_card detectors and "
          f"property name; HMAC distinct_id and user_id; {args.suppress:,} distinct_ids suppressed "
          f"({info['suppressed_events']:,} events)")
    print(f"\nEvery run (each in a fresh process; ev/s of the {events:,} events read)")
    print(runs_table(runs, events))
    print(f"\nSummary (best of {args.repeat}). Placement: policy seconds / baseline seconds < {RATIO_TARGET:.2f}")
    print(summary_table(runs, args.formats, events))
    for fmt in args.formats:
        base, pol = best(runs[f"{fmt} baseline"]), best(runs[f"{fmt} policy"])
        if base.error or pol.error:
            print(f"{fmt}: ERROR")
        else:
            ratio = pol.seconds / base.seconds
            print(f"{fmt}: policy/baseline {ratio:.2f} (target < {RATIO_TARGET:.2f}) {verdict(ratio < RATIO_TARGET)}")
    print("\nWhere the policy run's transform went (fastest run; wall seconds in the read-ahead thread, which "
          "overlaps the writer, so they add to the run's time only where the writer waits)")
    print(breakdown_table(runs, args.formats, events))
    if lines := leaks_line(runs, args.formats):
        print("\nLeak check of the first policy output (rows; all should be 0)")
        print("\n".join(lines))
    print(f"\ntotal wall time {time.perf_counter() - began:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
