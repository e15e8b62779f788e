"""The SN17 sensors left unattended: validator-chosen ids checked at the edge, one task's trouble never
costing the others, a tick's cost following the work in flight (not the history), one claim per task
however many sensors share the store, and a tick whose result was lost made good. Driven the way it
happens: LocalValidators on bittensor's Axon, the real puller, real files and a real S3 server, sensor
ticks through ``dg.build_sensor_context``."""

import threading
import time
import uuid

import dagster as dg
import pytest

from threegen_dagster.definitions import build_definitions
from threegen_dagster.keys import Prompt, generation_key
from threegen_dagster.sn17.client import PulledTask
from threegen_dagster.sn17.protocol import Task
from threegen_dagster.sn17.queue import ACTIVE, TASK_DEADLINE_S, TaskQueue
from threegen_dagster.defs.sn17 import (
    RELAUNCH_AFTER_S,
    TAG_TASK,
    hold_name,
    sn17_submission_sensor,
    sn17_task_sensor,
)
from threegen_dagster.storage import LocalStore
from threegen_dagster.tasks import TASK_ID_CHARS

from ..s3_server import BUCKET
from . import harness
from .harness import CALLS, CountingStoreResource, miner_settings, pull, queue_of, resources, tick
from .local_validator import HOST, LocalValidator

GOOD_ID = ("T." + "ab:c_d-" * 12)[:TASK_ID_CHARS]  # the longest id allowed, every allowed character


@pytest.fixture
def validators(tmp_path):
    """validators(n) -> n running LocalValidators (stopped after the test)."""
    running = []

    def start(n):
        more = [LocalValidator(tmp_path / f"v{len(running) + i}").start() for i in range(n)]
        running.extend(more)
        return more

    yield start
    for v in running:
        v.stop()


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_bad_ids_are_rejected_at_the_edge_and_answered(tmp_path, miner, validators, instance, shared_store):
    settings = miner_settings(tmp_path, variants=2, **shared_store)
    vs = validators(4)
    bad = ["task-1\n", "x" * 100, "a" * (TASK_ID_CHARS + 1)]  # a trailing newline passed `$`; 100+ broke holds
    for v, task_id in zip(vs, [*bad, GOOD_ID]):
        v.add_task(f"a chair for {task_id[:5]}", id=task_id)
    summary = pull(settings, miner, vs)
    assert (summary["new"], summary["rejected"], summary["errors"]) == (4, 3, {})
    queue = queue_of(settings)
    for v, task_id in zip(vs[:3], bad):
        entry = queue.get(task_id)
        assert entry["state"] == "rejected" and entry["released"] and "not a usable task id" in entry["reason"]
        assert [(s.task_id, s.outcome, s.signature_ok) for s in v.received] == [(task_id, "empty", True)]
    assert [e["task_id"] for e in queue.active()] == [GOOD_ID]  # the rejected ones are not even indexed

    requests = tick(sn17_task_sensor, instance, resources(settings))
    # every name derived from the longest id satisfies its own rule: the holds were written, the run
    # keys and tags made, the queue path and its marker are store paths
    assert sorted(r.run_key for r in requests) == [f"sn17:{GOOD_ID}:0", f"sn17:{GOOD_ID}:1"]
    assert {r.tags[TAG_TASK] for r in requests} == {GOOD_ID}
    holds = resources(settings)["store"].ledger().holds()
    assert sorted(holds) == sorted(r.partition_key for r in requests)
    assert all(names == [hold_name(GOOD_ID)] for names in holds.values())
    assert queue.get(GOOD_ID)["state"] == "running"
    generate = build_definitions(settings).resolve_job_def("generate")
    for r in requests:  # the daemon's step: the runs, with those tags and run keys, in the instance
        instance.create_run_for_job(job_def=generate, tags={**r.tags, "dagster/run_key": r.run_key})
    runs = instance.get_runs(dg.RunsFilter(tags={TAG_TASK: GOOD_ID}))
    assert sorted(run.tags["dagster/run_key"] for run in runs) == sorted(r.run_key for r in requests)


def test_records_left_by_an_older_version_are_indexed_or_rejected(tmp_path, miner, validators, instance):
    """Records the puller wrote before the index (no markers; ids its looser rule let through) on the
    first ticks after an upgrade: the good ones go on, the bad ones are rejected, nothing raises."""
    settings = miner_settings(tmp_path)
    store = resources(settings)["store"].store()
    harness.write_old_record(store, "old-ok", "a wooden chair")
    harness.write_old_record(store, "old-bad\n", "a wooden chair")
    harness.write_old_record(store, "y" * 120, "a wooden chair")
    harness.write_old_record(store, "old-running", "a red mug", state="running")
    harness.write_old_record(store, "old-done", "a red mug", state="submitted")
    (v,) = validators(1)
    fresh = v.add_task("a blue vase")
    pull(settings, miner, [v])

    requests = tick(sn17_task_sensor, instance, resources(settings), cursor=None)  # the first tick: no cursor
    assert sorted(r.tags[TAG_TASK] for r in requests) == sorted(["old-ok", fresh.id])
    queue = queue_of(settings)
    for raw in ("old-bad\n", "y" * 120):
        entry = queue._read(f"sn17/tasks/{raw}.json")
        assert entry["state"] == "rejected" and "queued by an older version" in entry["reason"]
    assert queue.get("old-done")["state"] == "submitted"
    # the old running task is indexed, so the submission sensor sees it (it had no variants to wait for)
    (submit,) = tick(sn17_submission_sensor, instance, resources(settings))
    assert submit.run_key == "submit:old-running"


def test_reindexing_reads_a_bounded_batch_per_call(tmp_path):
    store = harness.CountingLocalStore(tmp_path / "store")
    for n in range(7):
        harness.write_old_record(store, f"old-{n}", "a chair", state="pulled" if n % 2 else "submitted")
    queue, after, calls = TaskQueue(store), "", 0
    CALLS.clear()
    while after is not None:
        before = len(CALLS)
        after = queue.reindex(after=after, limit=3)
        assert len([c for c in CALLS[before:] if c[0] == "read"]) <= 3
        calls += 1
    assert calls == 3 and sorted(e["task_id"] for e in queue.active()) == ["old-1", "old-3", "old-5"]


def test_a_task_that_cannot_start_costs_the_others_nothing_and_fails_after_its_tries(
        tmp_path, miner, validators, instance):
    settings = miner_settings(tmp_path)
    vs = validators(3)
    tasks = [v.add_task(prompt) for v, prompt in zip(vs, ["a wooden chair", "a red mug", "a blue vase"])]
    pull(settings, miner, vs)
    res = resources(settings)
    store, ledger = res["store"].store(), res["store"].ledger()
    # the red mug's hold cannot be written: where its folder should be, there is a file
    assert isinstance(store, LocalStore)
    blocked = store.path(f"ledger/holds/{generation_key(Prompt.from_text('a red mug'), 0)}")
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("not a folder")

    requests = tick(sn17_task_sensor, instance, res)
    assert sorted(r.tags[TAG_TASK] for r in requests) == sorted([tasks[0].id, tasks[2].id])
    queue = queue_of(settings)
    stuck = queue.get(tasks[1].id)
    assert stuck["state"] == "pulled" and stuck["start_errors"] == 1 and "cannot write" in stuck["last_error"]
    assert tick(sn17_task_sensor, instance, res) == []  # tried again: still blocked
    assert tick(sn17_task_sensor, instance, res) == []  # third try: given up
    failed = queue.get(tasks[1].id)
    assert failed["state"] == "failed" and failed["reason"].startswith("could not start: StorageError")
    assert hold_name(tasks[1].id) not in sum(ledger.holds().values(), [])  # nothing of it stays held
    assert tasks[1].id not in {e["task_id"] for e in queue.active()}
    assert {queue.get(t.id)["state"] for t in (tasks[0], tasks[2])} == {"running"}


def test_a_task_past_its_deadline_expires_and_is_never_run(tmp_path, miner, validators, instance):
    """A pulled task waited for a start however long the sensor was away (stopped, or behind a flood), then
    ran for a validator that stopped waiting. Now one not started TASK_DEADLINE_S after its pull expires,
    with the reason: no generations, no holds, no runs, no submission; the fresh one beside it starts."""
    settings = miner_settings(tmp_path)
    vs = validators(2)
    stale, fresh = vs[0].add_task("a wooden chair"), vs[1].add_task("a red mug")
    pull(settings, miner, vs)
    res, queue = resources(settings), queue_of(settings)
    queue.transition(stale.id, ("pulled",), "pulled", pulled_at=time.time() - TASK_DEADLINE_S - 1)

    requests = tick(sn17_task_sensor, instance, res)
    assert {r.tags[TAG_TASK] for r in requests} == {fresh.id}
    entry = queue.get(stale.id)
    assert entry["state"] == "expired" and "keys" not in entry
    assert entry["reason"] == ("expired: not started within 300 s of its pull (the validator's deadline); "
                               "never run or submitted")
    assert [e["task_id"] for e in queue.active()] == [fresh.id]
    assert all(hold_name(stale.id) not in names for names in res["store"].ledger().holds().values())
    assert tick(sn17_task_sensor, instance, res) == [] and tick(sn17_submission_sensor, instance, res) == []
    submit = build_definitions(settings).resolve_job_def("submit").execute_in_process(
        instance=instance, run_config={"ops": {"submit_task": {"config": {"task_id": stale.id}}}})
    assert submit.output_for_node("submit_task")["reason"] == "the task is expired already"
    assert vs[0].received == []


def _age(queue: TaskQueue, task_id: str) -> None:
    """As if RELAUNCH_AFTER_S had passed since the task was claimed."""
    queue.transition(task_id, ("running",), "running", started_at=time.time() - RELAUNCH_AFTER_S - 1)


def test_a_tick_whose_result_was_lost_is_requested_again(tmp_path, miner, validators, instance):
    settings = miner_settings(tmp_path, variants=2)
    vs = validators(2)
    lost, kept = vs[0].add_task("a wooden chair"), vs[1].add_task("a red mug")
    pull(settings, miner, vs)
    res, queue = resources(settings), queue_of(settings)
    # both claimed; say the code server died before the daemon recorded the tick: no run of `lost`
    # reaches the instance, while `kept`'s runs did (created as the daemon creates them)
    first = tick(sn17_task_sensor, instance, res)
    job = build_definitions(settings).resolve_job_def("generate")
    for request in first:
        if request.tags[TAG_TASK] == kept.id:
            instance.create_run_for_job(job_def=job, tags={**request.tags, "dagster/run_key": request.run_key})
    assert tick(sn17_task_sensor, instance, res) == []  # too fresh to call lost
    _age(queue, lost.id)
    _age(queue, kept.id)
    again = tick(sn17_task_sensor, instance, res)
    assert sorted(r.run_key for r in again) == sorted(r.run_key for r in first if r.tags[TAG_TASK] == lost.id)
    assert queue.get(kept.id)["state"] == "running" and "relaunches" not in queue.get(kept.id)
    _age(queue, lost.id)
    assert len(tick(sn17_task_sensor, instance, res)) == 2
    _age(queue, lost.id)
    assert tick(sn17_task_sensor, instance, res) == []  # requested three times and never started: failed
    failed = queue.get(lost.id)
    assert failed["state"] == "failed" and "did not start after 3 requests" in failed["reason"]
    assert all(hold_name(lost.id) not in names for names in res["store"].ledger().holds().values())


@pytest.fixture(params=["local", "s3"])
def shared_store(request, tmp_path, monkeypatch) -> dict:
    """Settings keywords for a local folder or a fresh prefix on the test S3 server."""
    if request.param == "local":
        return {}
    server = request.getfixturevalue("s3_server")
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return {"store": f"s3://{BUCKET}/sn17-{uuid.uuid4().hex[:10]}", "s3_endpoint": server.endpoint}


def _queue_tasks(queue: TaskQueue, states: list[str], name: str = "task") -> list[str]:
    """Tasks queued as the puller queues them, then moved to ``states`` (a submission just begun)."""
    ids = []
    for n, state in enumerate(states):
        task = Task(prompt=f"{name} number {n}", id=f"{name}-{n:04d}")
        assert queue.add(PulledTask(0, "5Validator", task, 0.6, time.time() + n / 1000, HOST, 1))
        if state != "pulled":
            queue.set_state(task.id, state, keys=[], attempt={"id": "a", "run_id": "", "at": time.time()})
        ids.append(task.id)
    return ids


def test_a_tick_reads_only_the_active_tasks(tmp_path, shared_store, instance):
    settings = miner_settings(tmp_path, **shared_store)
    store = CountingStoreResource.from_settings(settings)
    queue = TaskQueue(store.store())
    finished = _queue_tasks(queue, ["submitted", "rejected", "failed"] * 70)  # a week of history
    active = _queue_tasks(queue, ["pulled", "pulled", "running", "submitting"], name="busy")
    res = {"store": store, "sn17": resources(settings)["sn17"]}

    for sensor in (sn17_task_sensor, sn17_submission_sensor):
        CALLS.clear()
        tick(sensor, instance, res)
        task_reads = {path for op, path in CALLS if op == "read" and path.startswith("sn17/")}
        assert task_reads and task_reads <= {TaskQueue.path(t) for t in active}, sensor.name
        assert [c for c in CALLS if c[0] == "list"] == [("list", ACTIVE)], sensor.name
        assert not {TaskQueue.path(t) for t in finished} & {path for _, path in CALLS}
    assert [queue.get(t)["state"] for t in active] == ["running", "running", "running", "submitting"]


def test_one_claim_per_task_however_many_sensors_share_the_store(tmp_path, shared_store):
    """Two code locations, each with its own sensor and run storage (Dagster's run-key check cannot
    see across them), tick at the same moment on one store: each task starts once."""
    settings = miner_settings(tmp_path, variants=2, **shared_store)
    queue = queue_of(settings)
    ids = _queue_tasks(queue, ["pulled"] * 6)
    results, meet = [None, None], threading.Barrier(2)

    def location(n):
        with dg.instance_for_test() as instance:
            res = resources(settings)
            res["store"].store()  # opened before the race
            meet.wait()
            results[n] = tick(sn17_task_sensor, instance, res)

    threads = [threading.Thread(target=location, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [r.run_key for rs in results for r in rs]
    assert sorted(keys) == sorted(f"sn17:{t}:{seed}" for t in ids for seed in range(2))  # each once, in all
    assert {queue.get(t)["state"] for t in ids} == {"running"}


def test_a_damaged_task_record_is_reported_and_the_others_go_on(tmp_path, miner, validators, instance, capfd):
    settings = miner_settings(tmp_path)
    vs = validators(2)
    damaged, fine = vs[0].add_task("a wooden chair"), vs[1].add_task("a red mug")
    pull(settings, miner, vs)
    store = resources(settings)["store"].store()
    store.path(TaskQueue.path(damaged.id)).write_text('{"task_id": "' + damaged.id + '", "sta')  # cut short
    # each tick reports it and goes on: the task sensor starts the other task, the submission sensor
    # waits for that task's run
    assert [r.tags[TAG_TASK] for r in tick(sn17_task_sensor, instance, resources(settings))] == [fine.id]
    assert tick(sn17_submission_sensor, instance, resources(settings)) == []
    logged = capfd.readouterr().err  # the ticks' log (Dagster's handler writes it to stderr)
    assert logged.count(f"WARNING - sn17: skipped the task record {store.uri(TaskQueue.path(damaged.id))}: ") == 2
    assert queue_of(settings).get(fine.id)["state"] == "running"


def test_the_submission_waits_for_every_variants_run(tmp_path, miner, validators, instance):
    """Two seed variants: no submit run while one variant's run is missing or still going; one as
    soon as both have finished, whichever way they ended."""
    settings = miner_settings(tmp_path, variants=2)
    vs = validators(1)
    task = vs[0].add_task("a wooden chair")
    pull(settings, miner, vs)
    res = resources(settings)
    first, second = tick(sn17_task_sensor, instance, res)
    job = build_definitions(settings).resolve_job_def("generate")

    def run_of(request, status):
        return instance.create_run_for_job(job_def=job, status=status,
                                           tags={**request.tags, "dagster/run_key": request.run_key})

    run_of(first, dg.DagsterRunStatus.SUCCESS)
    assert tick(sn17_submission_sensor, instance, res) == []  # the second variant has no run yet
    going = run_of(second, dg.DagsterRunStatus.STARTED)
    assert tick(sn17_submission_sensor, instance, res) == []  # ... and then it is still running
    instance.delete_run(going.run_id)
    run_of(second, dg.DagsterRunStatus.FAILURE)
    (submit,) = tick(sn17_submission_sensor, instance, res)
    assert submit.run_key == f"submit:{task.id}" and submit.tags[TAG_TASK] == task.id
