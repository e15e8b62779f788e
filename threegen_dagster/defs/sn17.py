"""Room ``sn17``: queued validator tasks become generations and runs (sensor), and when every
variant of a task has finished, a run decides and submits (sensor + job); the tables of submissions
and of validators live in the ``catalog`` room. The network calls for pulling live in the puller
(``threegen puller``); the submission is one signed call from its run."""

import asyncio
import base64
import time
import uuid

import dagster as dg
from pydantic import Field

from ..sn17.decision import Candidate, decide
from ..sn17.queue import TERMINAL_STATES, NotClaimed, TaskQueue, entry_prompt
from ..storage import StorageError
from ..tasks import TaskError
from .generation import generate_job, generations
from .resources import ScoreResource, SN17Resource, StoreResource, gpu_tagged

TAG_TASK = "threegen/task_id"
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
# A task claimed this long ago whose runs are not in the instance lost the tick that claimed it (a code
# server or daemon killed in between; Dagster resumes only ticks it had recorded): its runs are
# requested again, with the same run keys.
RELAUNCH_AFTER_S = 300.0
MAX_STARTS = 3  # tries to start a task, or requests of its runs, before it is failed
INDEXED = "sn17-active-index-v1"  # the task sensor's cursor once the queue's active index was built
REINDEX_PER_TICK = 500  # records read per tick while building it (a sensor tick must stay short)
RECORD_DELAYS_S = (0.5, 2.0, 5.0)  # waits between tries to record the validator's answer


def hold_name(task_id: str) -> str:
    return f"submission-{task_id}"


def run_key(task_id: str, seed: int) -> str:
    return f"sn17:{task_id}:{seed}"


def release_holds(ledger, entry: dict) -> None:
    for key in entry.get("keys", []):
        ledger.release(key, hold_name(entry["task_id"]))


def fail_task(queue: TaskQueue, ledger, entry: dict, expect: tuple[str, ...], reason: str, **options) -> dict:
    """The task's terminal ``failed`` state with the reason; its generations' holds are released."""
    failed = queue.transition(entry["task_id"], expect, "failed", reason=reason, failed_at=time.time(), **options)
    release_holds(ledger, failed)
    return failed


def _index_once(context, queue: TaskQueue) -> None:
    """Records queued before the active index existed get their markers, a bounded batch per tick; the
    sensor's cursor keeps the place, then says it is done (INDEXED)."""
    if context.cursor == INDEXED:
        return
    after = queue.reindex(after=context.cursor or "", limit=REINDEX_PER_TICK)
    for note in queue.notes:
        context.log.warning(f"sn17: {note}")
    context.update_cursor(INDEXED if after is None else after)


def _active(context, queue: TaskQueue) -> list[dict]:
    entries = queue.active()
    for note in queue.notes:
        context.log.warning(f"sn17: {note}")
    return entries


def variant_requests(entry: dict) -> list[dg.RunRequest]:
    """One run per seed variant of a running task; the run key makes each one happen once."""
    tags = {TAG_TASK: entry["task_id"], "threegen/source": "sn17", "threegen/validator": str(entry["validator_uid"])}
    return [dg.RunRequest(run_key=run_key(entry["task_id"], seed), partition_key=key, tags=tags)
            for seed, key in enumerate(entry["keys"])]


def _hold_generations(ledger, entry: dict, variants: int) -> list[str]:
    """The task's generations in the ledger, each held from retention until the task is finished; their
    keys. Repeatable: adding and holding again change nothing."""
    prompt, keys = entry_prompt(entry), []
    for seed in range(variants):
        generation, _ = ledger.add(prompt, seed, source="sn17", task_id=entry["task_id"])
        ledger.hold(generation.key, hold_name(entry["task_id"]), "pending SN17 submission")
        keys.append(generation.key)
    return keys


def _start(context, queue: TaskQueue, ledger, entry: dict, variants: int) -> list[dg.RunRequest]:
    """Register and hold a pulled task's generations, then claim it (compare-and-swap: one sensor wins)
    and request its runs. A malformed task is rejected; one that cannot start is tried on later ticks,
    then failed; each with its reason."""
    task_id = entry["task_id"]
    try:
        keys = _hold_generations(ledger, entry, variants)
    except TaskError as exc:
        queue.transition(task_id, ("pulled",), "rejected", reason=str(exc))
        context.log.warning(f"sn17: task {task_id!r} rejected: {exc}")
        return []
    except Exception as exc:  # noqa: BLE001 - this task only
        tries, error = entry.get("start_errors", 0) + 1, f"{type(exc).__name__}: {exc}"
        if tries < MAX_STARTS:
            queue.transition(task_id, ("pulled",), "pulled", start_errors=tries, last_error=error)
            context.log.error(f"sn17: task {task_id} could not start (try {tries} of {MAX_STARTS}): {error}")
        else:
            queue.transition(task_id, ("pulled",), "failed", reason=f"could not start: {error}", failed_at=time.time())
            _release_all(ledger, task_id)
            context.log.error(f"sn17: task {task_id} failed: could not start: {error}")
        return []
    claimed = queue.transition(task_id, ("pulled",), "running", keys=keys, started_at=time.time())
    return variant_requests(claimed)


def _release_all(ledger, task_id: str) -> None:
    """The task's holds wherever they are (its keys were never recorded): a rare path, so a full listing."""
    for key, names in ledger.holds().items():
        if hold_name(task_id) in names:
            ledger.release(key, hold_name(task_id))


def _relaunch(context, queue: TaskQueue, ledger, entry: dict) -> list[dg.RunRequest]:
    """A task claimed long ago whose runs never reached the instance (the tick that claimed it was lost):
    request the missing ones again, with the same run keys; after MAX_STARTS requests it is failed."""
    runs = context.instance.get_run_records(dg.RunsFilter(tags={TAG_TASK: entry["task_id"]}, job_name="generate"))
    existing = {r.dagster_run.tags.get("dagster/run_key") for r in runs}
    missing = [r for r in variant_requests(entry) if r.run_key not in existing]
    if not missing:
        return []
    relaunches = entry.get("relaunches", 0) + 1
    if relaunches >= MAX_STARTS:
        fail_task(queue, ledger, entry, ("running",), f"its runs did not start after {relaunches} requests")
        context.log.error(f"sn17: task {entry['task_id']} failed: its runs did not start")
        return []
    queue.transition(entry["task_id"], ("running",), "running", relaunches=relaunches, started_at=time.time())
    context.log.warning(f"sn17: task {entry['task_id']}: {len(missing)} run(s) requested again (a lost tick)")
    return missing


@dg.sensor(job=generate_job, minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Turns SN17 tasks queued by `threegen puller` into generations and runs")
def sn17_task_sensor(context: dg.SensorEvaluationContext, store: StoreResource, sn17: SN17Resource):
    queue, ledger = TaskQueue(store.store()), store.ledger()
    _index_once(context, queue)
    active, requests, troubled, started, now = _active(context, queue), [], 0, 0, time.time()
    pulled = [e for e in active if e["state"] == "pulled"]
    overdue = [e for e in active if e["state"] == "running" and e.get("started_at", 0) < now - RELAUNCH_AFTER_S]
    for entry in pulled + overdue:  # each task alone: one that fails is logged, the others go on
        try:
            if entry["state"] == "pulled":
                if expired := queue.expire(entry, now):  # past the validator's deadline: never started
                    context.log.warning(f"sn17: task {entry['task_id']} {expired['reason']}")
                elif started < sn17.max_per_tick:
                    started += 1
                    requests += _start(context, queue, ledger, entry, sn17.variants)
            else:
                requests += _relaunch(context, queue, ledger, entry)
        except NotClaimed as exc:
            context.log.info(f"sn17: {exc} (moved on while we looked)")
        except Exception as exc:  # noqa: BLE001 - a store hiccup: the task stays as it was, tried next tick
            troubled += 1
            context.log.error(f"sn17: task {entry['task_id']!r}: {type(exc).__name__}: {exc}")
    keys = sorted({r.partition_key for r in requests})
    if requests or troubled:
        context.log.info(f"sn17: {len(requests)} run(s) for {len({r.tags[TAG_TASK] for r in requests})} task(s), "
                         f"{troubled} task(s) in trouble (see above)")
    return dg.SensorResult(run_requests=gpu_tagged(requests), dynamic_partitions_requests=[
        generations.build_add_request(keys)] if keys else [])


class SubmitConfig(dg.Config):
    task_id: str = Field(description="the queued SN17 task to decide and submit")


def _skip(task_id: str, why: str) -> dg.Output[dict]:
    return dg.Output({"task_id": task_id, "skipped": True, "reason": why}, metadata={"skipped": True, "reason": why})


def _same_attempt(attempt_id: str):
    return lambda current: "" if (current.get("attempt") or {}).get("id") == attempt_id else "a newer attempt owns it"


def attempt_over(instance, entry: dict, submit_timeout_s: float) -> str:
    """Why a ``submitting`` task's attempt will never record an outcome ("" while it still may): its run
    ended, or the send began twice the submit timeout ago (its process was killed). Such a task is
    failed, outcome unknown, and never sent again."""
    attempt = entry.get("attempt") or {}
    run = instance.get_run_by_id(attempt["run_id"]) if attempt.get("run_id") else None
    if run is not None and run.status in FINISHED:
        return f"its run {run.run_id} ended {run.status.value} mid-send"
    if time.time() > attempt.get("at", 0) + 2 * submit_timeout_s:
        return f"no answer recorded {2 * submit_timeout_s:.0f} s after the send began (run {attempt.get('run_id')})"
    return ""


def fail_unknown(queue: TaskQueue, ledger, entry: dict, why: str) -> str:
    reason = f"outcome unknown: {why}; not sent again"
    fail_task(queue, ledger, entry, ("submitting",), reason, check=_same_attempt((entry.get("attempt") or {}).get("id")))
    return reason


def _prepare(context, store: StoreResource, sn17: SN17Resource, threshold: float, entry: dict):
    """Everything before the send, none of it seen by the validator: the decision, the bytes, the hotkey
    and the dendrite (either can fail to load). Returns (decision, spz bytes, client)."""
    from ..sn17.client import MinerClient
    from ..sn17.validators import ValidatorBook

    artifacts, candidates = store.artifacts(), []
    for key in entry.get("keys", []):
        manifest = artifacts.latest(key, "validation_score")
        meta = manifest.metadata if manifest else {}
        candidates.append(Candidate(key, meta.get("score"), meta.get("check_failures", 1) == 0))
    # the validator's threshold decides the penalty; ours may be stricter (a proxy score wants a margin)
    decision = decide(candidates, max(float(entry.get("validation_threshold") or 0.0), threshold))
    spz = artifacts.load(decision.key, "compressed_splat")[1] if decision.submit else b""
    context.log.info(f"task {entry['task_id']}: {decision.reason}")
    client = MinerClient(sn17.wallet(), ValidatorBook(store.store()), submit_timeout=sn17.submit_timeout_s)
    client.dendrite  # noqa: B018 - loads the hotkey and makes the dendrite here, before anything is claimed
    return decision, spz, client


def _retry_or_fail(context, queue: TaskQueue, ledger, entry: dict, sn17: SN17Resource, error: str):
    """A try that provably sent nothing: again after the configured delay, or, on the last, the task fails."""
    if context.retry_number < sn17.submit_retries:
        context.log.warning(f"task {entry['task_id']}: nothing sent ({error}); trying again")
        raise dg.RetryRequested(max_retries=sn17.submit_retries, seconds_to_wait=sn17.submit_retry_delay_s)
    reason = f"not sent after {context.retry_number + 1} tries: {error}"
    fail_task(queue, ledger, entry, ("running",), reason)
    raise dg.Failure(f"task {entry['task_id']} failed: {reason}", allow_retries=False)


def _record_answer(context, queue: TaskQueue, task_id: str, check, record: dict) -> None:
    """The validator's answer, in hand: a store hiccup must not lose it, so recording is tried a few times.
    ``failed`` is accepted too: a sensor may have given the attempt up while the store was away."""
    for delay in (*RECORD_DELAYS_S, None):
        try:
            queue.transition(task_id, ("submitting", "failed"), "submitted", check=check, **record)
            return
        except StorageError as exc:
            if delay is None:
                raise dg.Failure(f"task {task_id}: the validator answered (accepted={record['accepted']}, feedback "
                                 f"{record['feedback']}) but recording it failed: {exc}. The task stays submitting "
                                 "until the submission sensor fails it (outcome unknown); it is never sent again",
                                 allow_retries=False) from exc
            context.log.warning(f"task {task_id}: recording the answer failed ({exc}); trying again in {delay} s")
            time.sleep(delay)


@dg.op(description="Picks the best variant (or an empty result below the threshold), signs and sends "
                   "SubmitResults once, records the validator's feedback and cooldown")
def submit_task(context: dg.OpExecutionContext, config: SubmitConfig, store: StoreResource, sn17: SN17Resource,
                score: ScoreResource) -> dg.Output[dict]:
    from ..sn17.puller import task_of, validator_of

    queue, ledger, task_id = TaskQueue(store.store()), store.ledger(), config.task_id
    entry = queue.get(task_id)
    if entry is None:
        raise dg.Failure(f"no queued SN17 task {task_id!r}")
    if entry["state"] in TERMINAL_STATES:  # a re-run never submits twice
        return _skip(task_id, f"the task is {entry['state']} already")
    if entry["state"] == "submitting":
        why = attempt_over(context.instance, entry, sn17.submit_timeout_s)
        if not why:
            return _skip(task_id, f"run {entry['attempt']['run_id']} is submitting it")
        raise dg.Failure(f"task {task_id} failed: {fail_unknown(queue, ledger, entry, why)}", allow_retries=False)
    if entry["state"] != "running":
        raise dg.Failure(f"task {task_id} is {entry['state']}: its generations were not started")
    try:
        decision, spz, client = _prepare(context, store, sn17, score.threshold, entry)
    except Exception as exc:  # noqa: BLE001 - nothing was sent: retried, then the task fails with the reason
        _retry_or_fail(context, queue, ledger, entry, sn17, f"{type(exc).__name__}: {exc}")

    # the intent, recorded before the send (compare-and-swap: one run sends); nothing sends after it again
    attempt = {"id": uuid.uuid4().hex, "run_id": context.run_id, "at": time.time(), "try": context.retry_number}
    try:
        entry = queue.transition(task_id, ("running",), "submitting", attempt=attempt, decision=decision.reason)
    except NotClaimed as exc:
        return _skip(task_id, str(exc))
    check = _same_attempt(attempt["id"])

    async def send():
        async with client:
            return await client.submit(validator_of(entry), task_of(entry), base64.b64encode(spz).decode())

    try:
        outcome = asyncio.run(send())
    except Exception as exc:  # noqa: BLE001 - whether it went out is unknown: never sent again
        outcome, error = None, f"outcome unknown: the send raised {type(exc).__name__}: {exc}; not sent again"
    if outcome is not None and outcome.error and not outcome.sent:  # provably never left
        entry = queue.transition(task_id, ("submitting",), "running", check=check, last_error=outcome.error)
        _retry_or_fail(context, queue, ledger, entry, sn17, outcome.error)
    if outcome is not None and outcome.error:
        error = f"outcome unknown: {outcome.error}; the validator may have it, so it is not sent again"
    if outcome is None or outcome.error:
        fail_task(queue, ledger, entry, ("submitting",), error, check=check)
        raise dg.Failure(f"task {task_id} to validator {entry['validator_uid']} failed: {error}", allow_retries=False)

    record = {"decision": decision.reason, "submitted_key": decision.key, "score": decision.score,
              "accepted": outcome.accepted, "feedback": outcome.feedback, "cooldown_until": outcome.cooldown_until,
              "submit_seconds": round(outcome.seconds, 3), "submitted_at": time.time()}
    _record_answer(context, queue, task_id, check, record)
    release_holds(ledger, entry)
    feedback = outcome.feedback or {}
    return dg.Output({"task_id": task_id, **record}, metadata={
        "task_id": task_id, "validator": entry["validator_uid"], "decision": decision.reason,
        "submitted": decision.submit, "score": decision.score if decision.score is not None else -1.0,
        "accepted": outcome.accepted, "spz_bytes": len(spz), "submit_seconds": round(outcome.seconds, 3),
        "task_fidelity_score": feedback.get("task_fidelity_score", -1.0),
        "cooldown_s": round(max(0.0, outcome.cooldown_until - time.time()))})


# No RetryPolicy: a step retry would re-run the send. The op retries only what provably sent nothing
# (RetryRequested, SN17Resource.submit_retries / submit_retry_delay_s).
@dg.job(description="Decide and submit one SN17 task", executor_def=dg.in_process_executor)
def submit():
    submit_task()


def _submission_due(context, queue: TaskQueue, ledger, entry: dict) -> dg.RunRequest | None:
    runs = context.instance.get_run_records(dg.RunsFilter(tags={TAG_TASK: entry["task_id"]}, job_name="generate"))
    if len(runs) < len(entry.get("keys", [])) or any(r.dagster_run.status not in FINISHED for r in runs):
        return None
    submits = context.instance.get_run_records(dg.RunsFilter(tags={TAG_TASK: entry["task_id"]}, job_name="submit"))
    if submits and all(r.dagster_run.status in FINISHED for r in submits):
        # its submit run ended before it could send (its run key is spent: it is not launched again)
        last = submits[0].dagster_run
        fail_task(queue, ledger, entry, ("running",),
                  f"the submit run {last.run_id} ended {last.status.value} before sending; see its log")
        context.log.error(f"sn17: task {entry['task_id']} failed: its submit run {last.run_id} ended "
                          f"{last.status.value} before sending")
        return None
    if submits:
        return None
    return dg.RunRequest(run_key=f"submit:{entry['task_id']}", tags={TAG_TASK: entry["task_id"]},
                         run_config=dg.RunConfig(ops={"submit_task": SubmitConfig(task_id=entry["task_id"])}))


def _settle_attempt(context, queue: TaskQueue, ledger, entry: dict, submit_timeout_s: float) -> None:
    why = attempt_over(context.instance, entry, submit_timeout_s)
    if why:
        context.log.error(f"sn17: task {entry['task_id']} failed: {fail_unknown(queue, ledger, entry, why)}")


# the job by name: a job object here makes Definitions copy the sensor to bind its resources, and that
# copy passes `owners=[]`, which Dagster 1.13 reports as a BetaWarning on every load
@dg.sensor(job_name="submit", minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Launches the submission of an SN17 task once every variant's run has finished; "
                       "fails a task whose submission ended without an outcome")
def sn17_submission_sensor(context: dg.SensorEvaluationContext, store: StoreResource, sn17: SN17Resource):
    queue, ledger = TaskQueue(store.store()), store.ledger()
    requests = []
    for entry in _active(context, queue):  # each task alone: one that fails is logged, the others go on
        try:
            if entry["state"] == "running":
                request = _submission_due(context, queue, ledger, entry)
                requests += [request] if request else []
            elif entry["state"] == "submitting":
                _settle_attempt(context, queue, ledger, entry, sn17.submit_timeout_s)
        except NotClaimed:
            continue  # moved on while we looked
        except Exception as exc:  # noqa: BLE001 - a store hiccup: tried again next tick
            context.log.error(f"sn17: task {entry['task_id']!r}: {type(exc).__name__}: {exc}")
    return requests
