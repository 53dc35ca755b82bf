"""The package's shape: layers point one way (no import cycles, nothing inside imports the public
root), and the library's `export()` leaves the data dir as it found it but for the export."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

import analytics_export
from analytics_export import Settings, export

PACKAGE = Path(analytics_export.__file__).parent
NAME = "analytics_export"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The package's modules `name` imports, at the top or inside a function; `from pkg import sub`
    counts as importing `pkg.sub` only, unless it also takes a name that `pkg` itself defines."""
    path = MODULES[name]
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            subs = {f"{base}.{alias.name}" for alias in node.names}
            found |= subs & MODULES.keys()
            if not subs <= MODULES.keys() and base in MODULES:
                found.add(base)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & MODULES.keys()
    return found - {name}


GRAPH = {name: imports(name) for name in MODULES}


def test_nothing_inside_imports_the_public_root():
    importers = sorted(name for name, targets in GRAPH.items() if NAME in targets)
    assert importers == [], "the package root is public API only; import from the module that defines the name"


def test_library_export_creates_no_job_store(demo_settings, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(demo_settings.data_dir, data)
    before = {p.name for p in data.iterdir()}
    result = export(settings=Settings(data_dir=data), start_date="2026-10-01", end_date="2026-10-02",
                    format="parquet", output_dir=tmp_path / "out")
    assert pq.read_table(result.destination_path).num_rows == result.total_events > 0
    assert {p.name for p in data.iterdir()} == before  # no jobs.sqlite, no secret.key


def test_library_export_that_pseudonymises_keeps_its_secret(demo_settings, tmp_path: Path):
    data = tmp_path / "data"
    shutil.copytree(demo_settings.data_dir, data)
    settings = Settings(data_dir=data)
    runs = [export(settings=settings, start_date="2026-10-01", end_date="2026-10-02", format="parquet",
                   output=tmp_path / f"{n}.parquet", privacy={"pseudonymize_distinct_id": True}) for n in (1, 2)]
    first, second = (pq.read_table(r.destination_path).column("distinct_id").to_pylist() for r in runs)
    assert first == second and (data / "jobs.sqlite").exists()  # one project secret, kept in the job store


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_architecture_page_maps_every_module():
    """docs/architecture.md's module map names every module, so it cannot go stale unnoticed."""
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if "migrations" in relative.parts or path.stem in ("__init__", "__main__"):
            continue
        named = f"`{relative.name}`" if len(relative.parts) == 1 else f"`{path.stem}`"
        if named not in page:
            missing.append(str(relative))
    assert missing == [], "add these modules to docs/architecture.md's module map"


def test_each_migration_is_named_after_its_revision_in_one_chain():
    """store.jobs.HEAD is read from the file names, so a migrated store skips alembic altogether."""
    from analytics_export.store.jobs import HEAD, MIGRATIONS

    chain = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        tree = ast.parse(path.read_text())
        values = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name) and isinstance(node.value, ast.Constant)}
        assert values["revision"] == path.name.split("_")[0], path.name
        chain[values["revision"]] = values["down_revision"]
    newest = [r for r in chain if r not in chain.values()]
    assert newest == [HEAD]


def test_a_migrated_job_store_opens_without_alembic(tmp_path):
    script = ("import sys; from analytics_export.store.jobs import JobStore; "
              "j = JobStore.for_data_dir(sys.argv[1]); j.migrate(); j.migrate(); "
              "print('alembic' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert (first.stdout.strip(), again.stdout.strip()) == ("True", "False")
