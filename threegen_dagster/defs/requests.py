"""Room ``requests``: generations asked for from the UI.

- ``request_generations``, a job whose typed config is the request (prompts, or an image by path or
  URL, times seeds; the Launchpad shows its fields). Its one op checks the whole request, registers
  each generation (ledger and partition, as ``threegen add``) and names them in its metadata.
- ``start_requested_generations``, a run status sensor on that job's successes: one run of
  ``generate`` per generation the request asked to start. Dagster launches runs from sensors, not from
  ops: the daemon evaluates it under ``dagster dev``, a test ticks it, and its run keys (request run
  + key) make each start happen once, however often it is evaluated.
- ``remove_junk_partitions``: a partition whose name is not a key (typed into "Add partition") is
  removed after a minute, unless a run of it is in progress, with the reason in the tick's log.
"""

import json
import time
from urllib.parse import quote

import dagster as dg
from pydantic import Field

from ..catalog import md_cell
from ..cli_generate import register_in
from ..keys import PromptError, is_generation_key, key_error
from ..ledger import Generation
from ..prompt_requests import MAX_GENERATIONS, MAX_PROMPTS, MAX_SEEDS, parse_request
from .generation import generate_job, generations
from .resources import StoreResource, gpu_tagged

SOURCE = "ui"
TAG_REQUEST = "threegen/request_run"
START = "start"  # the output metadata entry naming the generations to start (what the sensor reads)
JUNK_GRACE_S = 60.0  # a partition that is not a key is removed once seen this long (its run may be launching)
IN_PROGRESS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
               dg.DagsterRunStatus.STARTED]


class GenerationRequest(dg.Config):
    """What to generate: every prompt (and the image) with every seed."""
    prompts: list[str] = Field([], description=f"Text prompts, e.g. 'a blue vase' (at most {MAX_PROMPTS})")
    image: str = Field("", description="An image prompt: a file path on the machine running the request, or an "
                                       "http(s) URL (PNG, JPEG or WebP)")
    caption: str = Field("", description="The image's caption (optional)")
    seeds: list[int] = Field([0], description=f"Seeds, each a generation per prompt (at most {MAX_SEEDS}; "
                                              f"{MAX_GENERATIONS} generations a request)")


def run_in_progress(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun | None:
    """A run of partition ``key`` that is queued or running, if any."""
    records = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": key}, statuses=IN_PROGRESS), limit=1)
    return records[0].dagster_run if records else None


def asset_link(key: str) -> str:
    return f"/assets/validation_score?view=partitions&partition={quote(key)}"


def _plan(context: dg.OpExecutionContext, store: StoreResource, entry: Generation, new: bool) -> str:
    """Whether to start a run for a registered generation: new or never completed, and none running."""
    if not new and store.artifacts().latest(entry.key, "validation_score") is not None:
        return "already generated: not run again (materialize it from its asset page to redo it)"
    running = run_in_progress(context.instance, entry.key)
    if running is not None:
        return f"a run of it is in progress ({running.run_id}): not started twice"
    return START


@dg.op(description="Checks the request, registers its generations (ledger and partitions) and names them; "
                   "the start_requested_generations sensor then starts their runs")
def register_request(context: dg.OpExecutionContext, config: GenerationRequest,
                     store: StoreResource) -> dg.Output[list[str]]:
    try:
        wanted = parse_request(config.prompts, config.seeds, config.image, config.caption)
    except PromptError as exc:
        raise dg.Failure(description=f"request refused, nothing registered: {exc}") from None
    ledger, done = store.ledger(), []
    try:
        for item in wanted:
            done.append(register_in(ledger, item.prompt, item.seed, SOURCE, context.instance))
    except Exception as exc:  # the store or the instance: undo this request's new registrations
        for entry, new, added in done:
            if new:
                ledger.remove(entry.key)
            if added:
                context.instance.delete_dynamic_partition(generations.name, entry.key)
        raise dg.Failure(description=f"request not registered (undone): {type(exc).__name__}: {exc}") from exc
    plans = {entry.key: _plan(context, store, entry, new) for entry, new, _ in done}
    start = [key for key, plan in plans.items() if plan == START]
    rows = ["| generation | prompt | seed | what happens |", "|---|---|---|---|"]
    for entry, new, _ in done:
        plan = plans[entry.key]
        what = ("registered; its run starts" if new else "registered before; its run starts") if plan == START \
            else md_cell(plan, 200)
        rows.append(f"| [{entry.key}]({asset_link(entry.key)}) | {md_cell(entry.label)} | {entry.seed} | {what} |")
    runs = f"/runs?q%5B0%5D={quote(f'tag:{TAG_REQUEST}={context.run_id}')}"
    context.log.info(f"request: {len(done)} generation(s) registered, {len(start)} to start: {', '.join(start)}")
    return dg.Output(start, metadata={
        "generations": dg.MetadataValue.md("\n".join(rows)),
        START: dg.MetadataValue.json(start),
        "keys": ", ".join(plans),
        "runs": dg.MetadataValue.md(f"[the runs of this request]({runs})"),
    })


@dg.job(description="Request generations from the UI: prompts (or an image) times seeds; they are registered "
                    "and their runs started", executor_def=dg.in_process_executor, tags={"threegen/source": SOURCE})
def request_generations():
    register_request()


def requested_keys(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The generations a successful request run asked to start (its op's ``start`` metadata)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT):
        metadata = record.dagster_event.step_output_data.metadata
        if START in metadata:
            return [key for key in metadata[START].value if is_generation_key(key)]
    return []


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[request_generations],
                      request_job=generate_job, default_status=dg.DefaultSensorStatus.RUNNING,
                      minimum_interval_seconds=5,
                      description="Starts one generate run per generation a request_generations run registered")
def start_requested_generations(context: dg.RunStatusSensorContext):
    request_run = context.dagster_run.run_id
    keys = requested_keys(context.instance, request_run)
    context.log.info(f"request {request_run}: starting {len(keys)} generation run(s)")
    return gpu_tagged([dg.RunRequest(run_key=f"{request_run}:{key}", partition_key=key,
                                     tags={"threegen/source": SOURCE, TAG_REQUEST: request_run}) for key in keys])


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Removes partitions whose name is not a generation key (typed into 'Add partition'), "
                       "saying why, so they do not stay in every partition list")
def remove_junk_partitions(context: dg.SensorEvaluationContext):
    now = time.time()
    seen = json.loads(context.cursor) if context.cursor else {}
    junk = [key for key in context.instance.get_dynamic_partitions(generations.name) if not is_generation_key(key)]
    seen = {key: seen.get(key, now) for key in junk}  # first seen; keys gone since are forgotten
    doomed = [key for key in junk if now - seen[key] >= JUNK_GRACE_S and run_in_progress(context.instance, key) is None]
    for key in doomed:
        context.log.warning(f"removed the partition {key!r}: {key_error(key)}")
        del seen[key]
    return dg.SensorResult(cursor=json.dumps(seen),
                           dynamic_partitions_requests=[generations.build_delete_request(doomed)] if doomed else [])
