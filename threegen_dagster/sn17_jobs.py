"""SN17 in Dagster: queued validator tasks become generations and runs (sensor), and when every
variant of a task has finished, a run decides and submits (sensor + job). The network calls for
pulling live in the puller (``threegen puller``); the submission is one signed call from its run."""

import asyncio
import base64
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from .assets import generations
from .catalog import markdown_table
from .jobs import generate_job
from .resources import ScoringResource, SN17Resource, StoreResource
from .sn17.decision import Candidate, decide
from .sn17.queue import TaskQueue, entry_prompt
from .tasks import TaskError

TAG_TASK = "threegen/task_id"
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def hold_name(task_id: str) -> str:
    return f"submission-{task_id}"


@dg.sensor(job=generate_job, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Turns SN17 tasks queued by `threegen puller` into generations and runs")
def sn17_task_sensor(context: dg.SensorEvaluationContext, store: StoreResource, sn17: SN17Resource):
    queue, ledger = TaskQueue(store.store()), store.ledger()
    requests, keys, rejected, started = [], [], 0, 0
    for entry in queue.pending()[: sn17.max_per_tick]:
        task_id = entry["task_id"]
        try:
            prompt = entry_prompt(entry)
        except TaskError as exc:
            queue.set_state(task_id, "rejected", reason=str(exc))
            context.log.warning(f"task {task_id!r} rejected: {exc}")
            rejected += 1
            continue
        variant_keys = []
        for seed in range(sn17.variants):  # competitive variants: the best-scoring seed is submitted
            generation, _ = ledger.add(prompt, seed, source="sn17", task_id=task_id)
            ledger.hold(generation.key, hold_name(task_id), "pending SN17 submission")
            variant_keys.append(generation.key)
            requests.append(dg.RunRequest(run_key=f"sn17:{task_id}:{seed}", partition_key=generation.key,
                                          tags={TAG_TASK: task_id, "threegen/source": "sn17",
                                                "threegen/validator": str(entry["validator_uid"])}))
        queue.set_state(task_id, "running", keys=variant_keys, started_at=time.time())
        keys += variant_keys
        started += 1
    if requests or rejected:
        context.log.info(f"sn17: {len(requests)} run(s) for {started} task(s), {rejected} rejected")
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=[
        generations.build_add_request(sorted(set(keys)))] if keys else [])


class SubmitConfig(dg.Config):
    task_id: str = Field(description="the queued SN17 task to decide and submit")


@dg.op(description="Picks the best variant (or an empty result below the threshold), signs and sends "
                   "SubmitResults, records the validator's feedback and cooldown")
def submit_task(context: dg.OpExecutionContext, config: SubmitConfig, store: StoreResource, sn17: SN17Resource,
                scoring: ScoringResource) -> dg.Output[dict]:
    from .sn17.client import MinerClient
    from .sn17.puller import task_of, validator_of
    from .sn17.validators import ValidatorBook

    queue, artifacts, ledger = TaskQueue(store.store()), store.artifacts(), store.ledger()
    entry = queue.get(config.task_id)
    if entry is None:
        raise dg.Failure(f"no queued SN17 task {config.task_id!r}")
    if entry["state"] == "submitted":  # a retried run must not submit twice
        context.log.info(f"task {config.task_id} was submitted already; nothing to do")
        return dg.Output({"task_id": config.task_id, "skipped": True}, metadata={"skipped": True})
    candidates = []
    for key in entry.get("keys", []):
        manifest = artifacts.latest(key, "validation_score")
        meta = manifest.metadata if manifest else {}
        candidates.append(Candidate(key, meta.get("score"), meta.get("check_failures", 1) == 0))
    # the validator's threshold decides the penalty; ours may be stricter (a proxy score wants a margin)
    threshold = max(float(entry.get("validation_threshold") or 0.0), scoring.threshold)
    decision = decide(candidates, threshold)
    spz = artifacts.load(decision.key, "compressed_splat")[1] if decision.submit else b""
    context.log.info(f"task {config.task_id}: {decision.reason}")

    async def send():
        async with MinerClient(sn17.wallet(), ValidatorBook(store.store()),
                               submit_timeout=sn17.submit_timeout_s) as client:
            return await client.submit(validator_of(entry), task_of(entry), base64.b64encode(spz).decode())

    outcome = asyncio.run(send())
    if outcome.error:
        queue.set_state(config.task_id, "running", last_error=outcome.error)
        raise dg.Failure(f"SubmitResults to validator {entry['validator_uid']} failed: {outcome.error}",
                         allow_retries=True)
    record = {"decision": decision.reason, "submitted_key": decision.key, "score": decision.score,
              "accepted": outcome.accepted, "feedback": outcome.feedback, "cooldown_until": outcome.cooldown_until,
              "submit_seconds": round(outcome.seconds, 3), "submitted_at": time.time()}
    queue.set_state(config.task_id, "submitted", **record)
    for key in entry.get("keys", []):
        ledger.release(key, hold_name(config.task_id))
    feedback = outcome.feedback or {}
    return dg.Output({"task_id": config.task_id, **record}, metadata={
        "task_id": config.task_id, "validator": entry["validator_uid"], "decision": decision.reason,
        "submitted": decision.submit, "score": decision.score if decision.score is not None else -1.0,
        "accepted": outcome.accepted, "spz_bytes": len(spz), "submit_seconds": round(outcome.seconds, 3),
        "task_fidelity_score": feedback.get("task_fidelity_score", -1.0),
        "cooldown_s": round(max(0.0, outcome.cooldown_until - time.time()))})


@dg.job(description="Decide and submit one SN17 task", executor_def=dg.in_process_executor,
        op_retry_policy=dg.RetryPolicy(max_retries=2, delay=10))
def submit():
    submit_task()


@dg.sensor(job=submit, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Launches the submission of an SN17 task once every variant's run has finished")
def sn17_submission_sensor(context: dg.SensorEvaluationContext, store: StoreResource):
    queue, requests = TaskQueue(store.store()), []
    for entry in queue.all():
        if entry["state"] != "running":
            continue
        runs = context.instance.get_run_records(dg.RunsFilter(tags={TAG_TASK: entry["task_id"]}, job_name="generate"))
        if len(runs) < len(entry.get("keys", [])) or any(r.dagster_run.status not in FINISHED for r in runs):
            continue
        requests.append(dg.RunRequest(run_key=f"submit:{entry['task_id']}", tags={TAG_TASK: entry["task_id"]},
                                      run_config=dg.RunConfig(ops={"submit_task": SubmitConfig(
                                          task_id=entry["task_id"])})))
    return requests


@dg.asset(group_name="catalog", io_manager_key="artifacts", kinds={"pandas"})
def sn17_submissions(store: StoreResource) -> dg.Output[pd.DataFrame]:
    """Every SN17 task this miner pulled: its validator, state, the decision, score and feedback."""
    columns = ["task_id", "type", "validator_uid", "state", "decision", "score", "accepted", "reason"]
    rows = [{c: e.get(c) for c in columns} | {"fidelity": (e.get("feedback") or {}).get("task_fidelity_score")}
            for e in TaskQueue(store.store()).all()]
    frame = pd.DataFrame(rows, columns=[*columns, "fidelity"])
    return dg.Output(frame, metadata={
        "tasks": len(frame), "submitted": int((frame["state"] == "submitted").sum()) if len(frame) else 0,
        "accepted": int(frame["accepted"].fillna(False).astype(bool).sum()) if len(frame) else 0,
        "table": dg.MetadataValue.md(markdown_table(frame, columns=(
            "task_id", "validator_uid", "state", "score", "accepted", "fidelity", "decision")))})
