"""The rooms hold: pure modules import with Dagster made unimportable; the wiring lives only in
``defs/``, ``definitions.py`` and the CLI's run helpers; the graph (asset keys, partitions, checks,
pools, resources, jobs, sensors, schedules) matches the checked-in snapshot, so any change to it
shows in review. Regenerate the snapshot after a deliberate change with
``.venv/bin/python -m threegen_dagster_tests.test_rooms``."""

import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

import threegen_dagster
from threegen_dagster.definitions import build_definitions
from threegen_dagster.settings import Settings

SNAPSHOT = Path(__file__).with_name("defs_snapshot.json")
WIRING = {"threegen_dagster.definitions", "threegen_dagster.cli", "threegen_dagster.cli_generate",
          "threegen_dagster.runs"}  # besides threegen_dagster.defs.*: the CLI drives runs on an instance


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(threegen_dagster.__path__, "threegen_dagster."))


def pure_modules() -> list[str]:
    return [m for m in modules() if m not in WIRING and not m.startswith("threegen_dagster.defs")]


BLOCK_DAGSTER = """
import importlib, sys
class NoDagster:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dagster", "dagster_aws", "dagster_shared", "dagster_pipes"):
            raise ImportError(f"{name} imported by a pure module")
sys.meta_path.insert(0, NoDagster())
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed.append(f"{name}: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_pure_modules_import_without_dagster() -> None:
    pure = pure_modules()
    assert "threegen_dagster.storage.uri" in pure and "threegen_dagster.backends.stages" in pure
    done = subprocess.run([sys.executable, "-c", BLOCK_DAGSTER, *pure], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_blocker_catches_a_dagster_import() -> None:
    done = subprocess.run([sys.executable, "-c", BLOCK_DAGSTER, "threegen_dagster.defs.resources"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "dagster imported by a pure module" in done.stdout


def imports_dagster(module: str) -> bool:
    origin = Path(importlib.util.find_spec(module).origin)
    if origin.suffix != ".py":  # the SPZ decoder's compiled loop (splats/_spz_kernel.c) imports Python alone
        return False
    source = origin.read_text()
    return bool(re.search(r"^\s*(import|from) dagster", source, re.M))


def test_only_the_wiring_imports_dagster() -> None:
    importers = {m for m in modules() if imports_dagster(m)}
    defs = {m for m in modules() if m.startswith("threegen_dagster.defs.")}
    assert importers - defs <= WIRING and defs - {"threegen_dagster.defs.__init__"} <= importers
    assert "threegen_dagster.definitions" in importers and "threegen_dagster.runs" in importers


def snapshot(tmp: Path) -> dict:
    """The shape of the graph, with the environment's defaults (no paths, no secrets)."""
    defs = build_definitions(Settings(store=str(tmp / "store"), inbox=tmp / "inbox"))
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        spec = node.assets_def
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name, "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": partitions.name if isinstance(partitions, dg.DynamicPartitionsDefinition) else None,
            "pool": spec.get_op_def_for_asset_key(key).pool if spec.is_executable else None,
            "kinds": sorted(node.kinds), "io_manager": spec.get_io_manager_key_for_asset_key(key),
            "resources": sorted(spec.required_resource_keys - {"artifacts"}),
            "checks": sorted({c.name: c.blocking for c in spec.check_specs if c.asset_key == key}.items()),
        }
    jobs = {}
    for name in sorted(repo.job_names):
        if name.startswith("__"):
            continue
        job = repo.get_job(name)
        jobs[name] = {"ops": sorted(n.name for n in job.graph.node_dict.values()),
                      "executor": job.executor_def.name}
    sensors = {s.name: {"status": s.default_status.value, "interval_s": s.minimum_interval_seconds,
                        "jobs": sorted(j.name for j in s.jobs) if s.has_jobs else []}
               for s in sorted(repo.sensor_defs, key=lambda s: s.name)}
    schedules = {s.name: {"cron": s.cron_schedule, "job": s.job_name, "status": s.default_status.value}
                 for s in repo.schedule_defs}
    resources = {k: type(v).__name__ + (f"({v.stage}: {v.backend})" if hasattr(v, "stage") else "")
                 for k, v in sorted(defs.resources.items())}
    return {"assets": assets, "jobs": jobs, "sensors": sensors, "schedules": schedules, "resources": resources}


def test_the_graph_matches_its_snapshot(tmp_path) -> None:
    assert json.loads(json.dumps(snapshot(tmp_path))) == json.loads(SNAPSHOT.read_text()), (
        "the Dagster graph changed: if that was meant, regenerate the snapshot "
        "(.venv/bin/python -m threegen_dagster_tests.test_rooms) and review its diff")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        SNAPSHOT.write_text(json.dumps(snapshot(Path(folder)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
