"""The pipeline on a Dagster instance in PostgreSQL: DAGSTER_HOME holds deploy/dagster.postgres.yaml
as it is documented, the test's own server is reached through its DAGSTER_PG_* variables, and
`threegen generate` runs every stage with its run, events, partition and pool slots in Postgres
(and nothing in SQLite)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster.catalog import STAGES

from .dagster_processes import BIN, ROOT, write_home


@pytest.fixture
def pg_home(pg_server, tmp_path, monkeypatch) -> dict[str, str]:
    db = pg_server.create_database()
    env = {"DAGSTER_HOME": str(write_home(tmp_path / "dagster", "postgres")), "THREEGEN_STORE": str(tmp_path / "store"),
           "THREEGEN_INBOX": str(tmp_path / "inbox"), **pg_server.env(db)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_threegen_generate_records_everything_in_postgres(pg_home, pg_server) -> None:
    done = subprocess.run([str(BIN / "threegen"), "generate", "a wooden chair", "--seed", "42", "--json"], cwd=ROOT,
                          env={**os.environ, **pg_home}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["success"] and report["key"] == "a-wooden-chair-1465ce6555-s42"

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        run = instance.get_run_by_id(report["run_id"])
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == report["key"]
        assert instance.get_dynamic_partitions("generations") == [report["key"]]
        for stage in STAGES:
            event = instance.get_latest_materialization_event(dg.AssetKey(stage))
            assert event is not None and event.run_id == run.run_id and event.asset_materialization.partition == report["key"], stage
        info = instance.event_log_storage.get_concurrency_info("gpu")
        assert info.slot_count == 1 and info.active_slot_count == 0  # the pool's slot, in Postgres, free again

    # the same facts straight from the database: the instance is Postgres, not a file beside it
    conn = pg_server.connect(pg_home["DAGSTER_PG_DB"])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (report["run_id"],))
        assert cur.fetchall() == [("SUCCESS",)]
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                    (report["run_id"],))
        assert cur.fetchone()[0] == len(STAGES)
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)  # the test server listens on loopback only
    conn.close()
    assert not list(Path(pg_home["DAGSTER_HOME"]).rglob("*.db"))  # no SQLite file anywhere in DAGSTER_HOME


def test_the_test_server_wants_its_password(pg_server) -> None:
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=pg_server.port, user="threegen", password="wrong", dbname="postgres")


def test_a_server_left_by_a_killed_session_is_stopped_by_the_next_one() -> None:
    import psutil

    from .pg_server import PgServer

    def postmasters(root: Path) -> list[int]:
        return [p.pid for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "postgres" and str(root / "data") in (p.info["cmdline"] or [])]

    session = subprocess.Popen([sys.executable, "-c", "import time; from threegen_dagster_tests.pg_server import "
                                "PgServer; print(PgServer().start().root, flush=True); time.sleep(300)"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        orphan = Path(session.stdout.readline().strip())
        assert postmasters(orphan)
    finally:
        session.kill()  # SIGKILL: no teardown; pg_ctl detached the server, which lives on
        session.wait()
    assert postmasters(orphan)
    with PgServer():
        assert postmasters(orphan) == [] and not orphan.exists()
