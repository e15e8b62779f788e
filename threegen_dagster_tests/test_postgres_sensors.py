"""The inbox sensor on a Dagster instance in PostgreSQL (deploy/dagster.postgres.yaml), ticked with
``dg.build_sensor_context``: what it learns from the instance (does a run with this task's tags
exist yet?) comes from Postgres, so a request and its file's move stay inseparable there too, and
a duplicate names the run it duplicates. (Under the real daemon: test_queued_runs_daemon.py.)"""

import json
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster.definitions import build_definitions
from threegen_dagster.settings import Settings

from .dagster_processes import write_home

STAND_IN = dg.GraphDefinition("stand_in", node_defs=[dg.op(name="noop")(lambda: None)]).to_job()


@pytest.fixture
def pg_instance(pg_server, tmp_path, monkeypatch):
    for name, value in pg_server.env(pg_server.create_database()).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(write_home(tmp_path / "dagster", "postgres"))) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        yield instance


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_the_inbox_sensor_takes_each_task_once_on_postgres(pg_instance, tmp_path) -> None:
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox")
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def("inbox_sensor")

    def tick() -> list[dg.RunRequest]:
        with dg.build_sensor_context(instance=pg_instance, resources=definitions.resources) as context:
            return sensor(context).run_requests

    inbox = settings.inbox
    inbox.mkdir()
    (inbox / "a.json").write_text(json.dumps({"id": "task-a", "prompt": "a brass lamp", "seed": 2}))
    (inbox / "b.json").write_text(json.dumps({"id": "task-a", "prompt": "a brass lamp", "seed": 2}))
    (inbox / "c.json").write_text("{not json")
    first = tick()
    assert [r.run_key for r in first] == ["task:task-a"]
    assert listing(inbox) == ["a.json", "duplicate", "rejected"]
    assert "file a.json" in (inbox / "duplicate" / "b.json.error.txt").read_text()
    assert [r.run_key for r in tick()] == ["task:task-a"]  # no run in Postgres yet: asked again, not moved
    assert listing(inbox) == ["a.json", "duplicate", "rejected"]

    run = pg_instance.create_run_for_job(STAND_IN, status=dg.DagsterRunStatus.NOT_STARTED, tags={  # as the daemon
        **first[0].tags, "dagster/run_key": first[0].run_key, "dagster/sensor_name": "inbox_sensor"})
    pg_instance.report_dagster_event(dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value,
                                                     job_name=run.job_name), run_id=run.run_id)
    assert tick() == []  # the run is in Postgres: the file moves, nothing is asked again
    assert listing(inbox / "accepted") == ["a.json"]

    (inbox / "d.json").write_text(json.dumps({"id": "task-a", "prompt": "a brass lamp", "seed": 2}))
    assert tick() == []
    assert run.run_id in (inbox / "duplicate" / "d.json.error.txt").read_text()
