"""Exactly-once submission, driven the way it goes wrong: a validator that counts the submission and then
answers too late, one that is down (for a while, or for good), the store killed right after the validator
answered, the submitting process killed mid-send, and two code locations submitting the same task. In
each case the validator receives the result at most once, and the task ends in a terminal state with its
holds released."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import pytest

from threegen_dagster import cli
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.sn17 import TAG_TASK, hold_name, sn17_submission_sensor, sn17_task_sensor

from ..s3_server import BUCKET, S3Server
from .harness import miner_settings, pull, queue_of, resources, tick
from .local_validator import LocalValidator


@pytest.fixture
def validator(tmp_path):
    running = []

    def start(**options):
        running.append(LocalValidator(tmp_path / f"v{len(running)}", **options).start())
        return running[-1]

    yield start
    for v in running:
        v.stop()


def claimed(settings, miner, validator, instance) -> str:
    """A task pulled by the real puller and started by the task sensor (its generations held); its id."""
    task = validator.add_task("a wooden chair")
    pull(settings, miner, [validator])
    assert tick(sn17_task_sensor, instance, resources(settings))
    return task.id


def submit(settings, instance, task_id: str):
    """The submit job for one task, in this process (as the sensor's run would run it)."""
    return build_definitions(settings).resolve_job_def("submit").execute_in_process(
        instance=instance, tags={TAG_TASK: task_id}, raise_on_error=False,
        run_config={"ops": {"submit_task": {"config": {"task_id": task_id}}}})


def held(settings, task_id: str) -> bool:
    return any(hold_name(task_id) in names for names in resources(settings)["store"].ledger().holds().values())


def test_a_timed_out_submission_fails_and_is_never_sent_again(tmp_path, miner, validator):
    v = validator(submit_delay=3.0)  # counts the submission, then answers after our timeout
    settings = miner_settings(tmp_path, submit_timeout_s=1.0)
    with dg.instance_for_test() as instance:
        task_id = claimed(settings, miner, v, instance)
        assert held(settings, task_id)
        assert not submit(settings, instance, task_id).success
        entry = queue_of(settings).get(task_id)
        assert entry["state"] == "failed" and entry["reason"].startswith("outcome unknown: 408 Request timeout")
        assert not held(settings, task_id)
        again = submit(settings, instance, task_id)  # a re-execution from the UI
        assert again.success and again.output_for_node("submit_task")["reason"] == "the task is failed already"
        assert tick(sn17_submission_sensor, instance, resources(settings)) == []
    assert [s.task_id for s in v.received] == [task_id]  # exactly once


def test_a_refused_submission_goes_out_once_the_validator_is_back(tmp_path, miner, validator):
    v = validator()
    settings = miner_settings(tmp_path, submit_retries=10, submit_retry_delay_s=1.0)
    with dg.instance_for_test() as instance:
        task_id = claimed(settings, miner, v, instance)
        v.stop()  # down: every connection is refused, so nothing can have reached it
        queue, axon = queue_of(settings), v.fresh_axon()  # built here: see LocalValidator.fresh_axon

        def back_after_the_first_refusal():
            while not (queue.get(task_id) or {}).get("last_error"):
                time.sleep(0.05)
            v.restart(axon)

        helper = threading.Thread(target=back_after_the_first_refusal)
        helper.start()
        result = submit(settings, instance, task_id)
        helper.join()
    assert result.success and not result.output_for_node("submit_task").get("skipped")
    entry = queue.get(task_id)
    assert entry["state"] == "submitted" and entry["last_error"].startswith("503 Service unavailable at")
    assert not held(settings, task_id)
    assert [(s.task_id, s.outcome) for s in v.received] == [(task_id, "empty")]  # once, after the retries


def test_a_validator_down_for_good_fails_the_task_and_releases_its_holds(tmp_path, miner, validator):
    v = validator()
    settings = miner_settings(tmp_path, submit_retries=2, submit_retry_delay_s=0.0)
    with dg.instance_for_test() as instance:
        task_id = claimed(settings, miner, v, instance)
        v.stop()
        assert not submit(settings, instance, task_id).success
        entry = queue_of(settings).get(task_id)
        assert entry["state"] == "failed"
        assert entry["reason"].startswith("not sent after 3 tries: 503 Service unavailable at")
        assert not held(settings, task_id) and queue_of(settings).active() == []
        assert tick(sn17_submission_sensor, instance, resources(settings)) == []
        # the UI's sn17_submissions asset shows it, with the reason
        catalog = build_definitions(settings).resolve_job_def("refresh_catalog").execute_in_process(
            instance=instance, run_config=cli.QUIET_RUN)
        (row,) = catalog.output_for_node("sn17_submissions").to_dict("records")
        assert (row["state"], row["reason"]) == ("failed", entry["reason"])
        (materialization,) = [e for e in catalog.get_asset_materialization_events()
                              if e.asset_key == dg.AssetKey("sn17_submissions")]
        assert materialization.materialization.metadata["failed"].value == 1
    assert v.received == []


def test_an_answer_the_store_cannot_record_is_never_sent_again(tmp_path, miner, validator, monkeypatch):
    (tmp_path / "s3").mkdir()
    server = S3Server(tmp_path / "s3").start()  # this test's own: it is killed on purpose
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        settings = miner_settings(tmp_path, store=f"s3://{BUCKET}/miner", s3_endpoint=server.endpoint)
        v = validator(on_submit=lambda submission: server.stop())  # the store dies as the validator counts it
        with dg.instance_for_test() as instance:
            task_id = claimed(settings, miner, v, instance)
            failed_run = submit(settings, instance, task_id)
            assert not failed_run.success
            server.start()  # back; the task still says submitting, from a run that has ended
            assert queue_of(settings).get(task_id)["state"] == "submitting"
            assert tick(sn17_submission_sensor, instance, resources(settings)) == []
            entry = queue_of(settings).get(task_id)
            assert entry["state"] == "failed" and entry["reason"].startswith(
                f"outcome unknown: its run {failed_run.run_id} ended FAILURE mid-send")
            assert not held(settings, task_id)
            again = submit(settings, instance, task_id)
            assert again.success and again.output_for_node("submit_task")["skipped"]
    finally:
        server.stop()
    assert [s.task_id for s in v.received] == [task_id]


def _submit_process(tmp_path, task_id: str, home, **options) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "threegen_dagster_tests.sn17.submit_process", str(tmp_path),
                             task_id, json.dumps(options)], env=env, stdout=subprocess.PIPE, text=True)


def test_a_submit_killed_mid_send_is_failed_and_not_sent_again(tmp_path, miner, validator):
    processes = []
    v = validator(on_submit=lambda submission: processes[0].send_signal(signal.SIGKILL))
    settings = miner_settings(tmp_path, submit_timeout_s=30.0)
    home = tmp_path / "dagster-home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        task_id = claimed(settings, miner, v, instance)
        processes.append(_submit_process(tmp_path, task_id, home, submit_timeout_s=30.0))
        assert processes[0].wait(timeout=300) == -signal.SIGKILL
        entry = queue_of(settings).get(task_id)
        assert entry["state"] == "submitting" and held(settings, task_id)
        (run,) = instance.get_runs(dg.RunsFilter(job_name="submit"))
        assert run.status == dg.DagsterRunStatus.STARTED  # killed: nothing marks its run ended
        again = submit(settings, instance, task_id)  # launched again meanwhile: does not send
        assert again.success and again.output_for_node("submit_task")["reason"] == f"run {run.run_id} is submitting it"
        # the sensor gives it up once twice its submit timeout has passed since the send began
        short = miner_settings(tmp_path, submit_timeout_s=0.5)
        time.sleep(max(0.0, entry["attempt"]["at"] + 1.0 - time.time()))
        assert tick(sn17_submission_sensor, instance, resources(short)) == []
        entry = queue_of(settings).get(task_id)
        assert entry["state"] == "failed" and entry["reason"].startswith("outcome unknown: no answer recorded")
        assert not held(settings, task_id)
    assert [s.task_id for s in v.received] == [task_id]


def test_two_code_locations_submit_a_task_once(tmp_path, miner, validator):
    """Each location has its own instance (so Dagster's run keys cannot tell), both launch the submit."""
    v = validator(submit_delay=1.0)
    settings = miner_settings(tmp_path)
    with dg.instance_for_test() as instance:
        task_id = claimed(settings, miner, v, instance)
    homes = [tmp_path / f"location-{n}" for n in range(2)]
    for home in homes:
        home.mkdir()
    processes = [_submit_process(tmp_path, task_id, home) for home in homes]
    outputs = [json.loads(p.communicate(timeout=300)[0].splitlines()[-1]) for p in processes]
    assert sorted(bool(out.get("skipped")) for out in outputs) == [False, True]
    assert queue_of(settings).get(task_id)["state"] == "submitted"
    assert [s.task_id for s in v.received] == [task_id]


def test_a_submit_that_cannot_load_its_hotkey_fails_the_task_without_sending(tmp_path, miner, validator):
    v = validator()
    settings = miner_settings(tmp_path, submit_retries=1, submit_retry_delay_s=0.0)
    with dg.instance_for_test() as instance:
        task_id = claimed(settings, miner, v, instance)
        (tmp_path / "wallets" / "miner" / "hotkeys" / "default").unlink()  # the hotkey file is gone
        assert not submit(settings, instance, task_id).success
        entry = queue_of(settings).get(task_id)
        assert entry["state"] == "failed" and entry["reason"].startswith("not sent after 2 tries: ")
        assert "attempt" not in entry and not held(settings, task_id)  # never claimed for a send
    assert v.received == []


def test_a_submit_run_cancelled_before_it_ran_fails_its_task(tmp_path, miner, validator):
    v = validator()
    settings = miner_settings(tmp_path)
    with dg.instance_for_test() as instance:
        task_id = claimed(settings, miner, v, instance)
        definitions = build_definitions(settings)
        # its generation run ended (failed); the submit run the sensor then asks for is cancelled in the UI
        run = instance.create_run_for_job(job_def=definitions.resolve_job_def("generate"), tags={TAG_TASK: task_id})
        instance.report_run_failed(run)
        (request,) = tick(sn17_submission_sensor, instance, resources(settings))
        queued = instance.create_run_for_job(job_def=definitions.resolve_job_def("submit"), tags=request.tags,
                                             run_config=request.run_config)
        instance.report_run_canceled(queued)
        assert tick(sn17_submission_sensor, instance, resources(settings)) == []
        entry = queue_of(settings).get(task_id)
        assert entry["state"] == "failed"
        assert entry["reason"] == f"the submit run {queued.run_id} ended CANCELED before sending; see its log"
        assert not held(settings, task_id)
    assert v.received == []
