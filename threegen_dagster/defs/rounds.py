"""Room ``rounds``: SN17 as it runs today, competitions in rounds (``rounds/`` holds the logic). A sensor
reads the round state (``RoundsResource``: the state repository over http(s), or a folder); when a round
enters ``miner_generation`` it registers the round's image prompts with the round's seed and launches one
run per prompt of the competition profile's job. Each profile has its output asset, partitioned like the
pipeline and downstream of its mesh or splat, with a blocking check of that competition's rules. A round
is a partition of ``sn17_round`` (its prompts, keys, deadline), and its runs carry its tags."""

import time
import warnings

import dagster as dg
from pydantic import Field

from ..codecs import png_bytes, stored_image
from ..rounds.comp2_check import CheckerError, Comp2Limits, check_module
from ..rounds.comp2_llm import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_S, LlmConfig, LlmError
from ..rounds.outputs01 import check_comp0, check_comp1, comp0_ply, comp1_glb
from ..rounds.prompts import ImageLimits
from ..rounds.register import RoundBook, register_prompts
from ..rounds.rules import CheckReport
from ..rounds.source import DEFAULT_BASE, RoundSource
from ..rounds.state import COMPETITION, ROUND_MARGIN_S, SECONDS_PER_BLOCK, iso
from ..splats import GaussianCloud
from .generation import describe, generations
from .resources import SplatResource, StoreResource, gpu_tagged

GROUP = "sn17_rounds"
TAG_ROUND, TAG_STEM, TAG_COMP = "threegen/round", "threegen/stem", "threegen/competition"
TAG_DEADLINE, TAG_DEADLINE_BLOCK = "threegen/round_deadline", "threegen/round_deadline_block"
rounds = dg.DynamicPartitionsDefinition(name="sn17_rounds")


class Comp2Rules(dg.Config):
    """The numbers the comp 2 check enforces (defaults: ``Comp2Limits``, as SN17-NOW.md gives today's rules);
    change them here, without a release, when the live rules change."""

    file_bytes: int = Field(Comp2Limits.file_bytes, ge=1)
    literal_bytes: int = Field(Comp2Limits.literal_bytes, ge=0)
    vertices: int = Field(Comp2Limits.vertices, ge=1)
    draw_calls: int = Field(Comp2Limits.draw_calls, ge=1)
    depth: int = Field(Comp2Limits.depth, ge=1)
    instances: int = Field(Comp2Limits.instances, ge=0)
    texture_bytes: int = Field(Comp2Limits.texture_bytes, ge=0)
    time_s: float = Field(Comp2Limits.time_s, gt=0)
    heap_mb: int = Field(Comp2Limits.heap_mb, ge=16)
    bound: float = Field(Comp2Limits.bound, gt=0)

    def limits(self) -> Comp2Limits:
        return Comp2Limits(**self.model_dump())


class RoundsResource(dg.ConfigurableResource):
    """Where the round state is read and how every read and prompt image is bounded; which competition."""

    source: str = Field(DEFAULT_BASE, description="The state repository's raw files (http(s) URL) or a folder")
    competition: int = Field(COMPETITION, ge=0, le=2, description="0: gaussian PLY, 1: GLB mesh, 2: three.js module")
    seconds_per_block: float = Field(SECONDS_PER_BLOCK, gt=0, description="Seconds per chain block")
    margin_s: float = Field(ROUND_MARGIN_S, ge=0, description="Taken off the deadline (the announcement's delay)")
    max_file_bytes: int = Field(4 * 2**20, ge=1024, description="Largest round state file read")
    timeout_s: float = Field(20.0, gt=0, description="Seconds per try of a state file")
    tries: int = Field(3, ge=1, le=10, description="Tries per read (errors that may pass: unreachable, HTTP 5xx)")
    image_timeout_s: float = Field(30.0, gt=0, description="Seconds per try of a prompt image")
    image_max_bytes: int = Field(20 * 2**20, ge=1024, description="Largest prompt image fetched")
    max_image_pixels: int | None = Field(None, description="Pixel bound on prompt images (None: the setting)")
    prompts_per_tick: int = Field(32, ge=1, description="Prompts fetched per tick (a tick stays short)")
    fetch_workers: int = Field(8, ge=1, le=64, description="Prompt images fetched at once")
    prompt_tries: int = Field(3, ge=1, description="Ticks a prompt is tried before it is given up")
    comp2_rules: Comp2Rules = Field(default_factory=Comp2Rules, description="The limits the comp 2 check enforces")

    @classmethod
    def from_settings(cls, settings) -> "RoundsResource":
        return cls(source=settings.rounds_source, competition=settings.competition,
                   seconds_per_block=settings.seconds_per_block, margin_s=settings.round_margin_s,
                   max_image_pixels=settings.max_image_pixels)

    def round_source(self) -> RoundSource:
        return RoundSource(self.source, max_bytes=self.max_file_bytes, timeout_s=self.timeout_s, tries=self.tries)

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.image_max_bytes, max_pixels=self.max_image_pixels,
                           timeout_s=self.image_timeout_s, tries=self.tries)


class Comp2Resource(dg.ConfigurableResource):
    """What writes comp 2 modules: the embedded encoder (the pipeline's mesh) or a code model behind an
    OpenAI-compatible API (THREEGEN_COMP2_BACKEND, THREEGEN_COMP2_LLM_*), its answers checked like any."""

    backend: str = Field("embedded", pattern="^(embedded|llm)$", description="'embedded' or 'llm' (a code model)")
    llm_url: str = Field("", description="The code model's API root, e.g. http://127.0.0.1:8000/v1")
    llm_model: str = Field("", description="The code model's name")
    llm_key: str = Field("", description="Its API key (THREEGEN_COMP2_LLM_KEY, given as an EnvVar: never shown)")
    llm_attempts: int = Field(DEFAULT_ATTEMPTS, ge=1, le=20, description="Answers asked for, a failed check fed back")
    llm_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="Seconds per request")
    llm_image: bool = Field(True, description="Send the prompt image (False: a text-only model)")
    fallback: bool = Field(True, description="When the model gives no module that passes, write the embedded one")

    @classmethod
    def from_settings(cls, settings) -> "Comp2Resource":
        llm = settings.comp2_llm
        if llm is None:
            return cls(backend=settings.comp2_backend, fallback=settings.comp2_fallback)
        return cls(backend=settings.comp2_backend, llm_url=llm.base_url, llm_model=llm.model,
                   llm_key=dg.EnvVar("THREEGEN_COMP2_LLM_KEY") if llm.api_key else "",  # resolved, never shown
                   llm_attempts=llm.attempts, llm_timeout_s=llm.timeout_s, llm_image=llm.send_image,
                   fallback=settings.comp2_fallback)

    def llm(self) -> LlmConfig | None:
        if self.backend != "llm":
            return None
        if not self.llm_url:
            raise dg.Failure("comp2_module: the llm backend needs the code model's URL (THREEGEN_COMP2_LLM_URL)")
        return LlmConfig(self.llm_url, self.llm_model, self.llm_key, attempts=self.llm_attempts,
                         timeout_s=self.llm_timeout_s, send_image=self.llm_image)


sn17_round = dg.AssetSpec(
    "sn17_round", group_name=GROUP, partitions_def=rounds, kinds={"json"},
    description="A round of SN17 as this miner took it up (recorded by sn17_round_sensor): its seed, "
                "schedule and deadline, each prompt's generation key, and the prompts given up with why")


def _deadline_metadata(context) -> dict:
    tags = context.run.tags if context.run else {}
    if TAG_DEADLINE not in tags:
        return {}
    left = float(tags.get("threegen/round_deadline_unix", "0")) - time.time()
    return {"round": tags.get(TAG_ROUND, ""), "stem": tags.get(TAG_STEM, ""), "deadline": tags[TAG_DEADLINE],
            "deadline_block": tags.get(TAG_DEADLINE_BLOCK, ""), "seconds_to_deadline": round(left)}


def _verdict(verdict: CheckReport) -> dict:
    """The check's verdict in the output's own metadata (kept in its version record: the round report reads it)."""
    return {"passed": verdict.ok, "rules_failed": ",".join(sorted(set(verdict.rules)))}


def _check_result(name: str, verdict: CheckReport) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name, passed=verdict.ok, description=None if verdict.ok else verdict.summary()[:2000],
        metadata={"rules_failed": ", ".join(sorted(set(verdict.rules))) or "none",
                  "failures": "; ".join(str(f) for f in verdict.failures)[:4000] or "none",
                  **{k: v for k, v in verdict.metrics.items() if isinstance(v, (int, float, str))}})


def _spec(name: str, asset: str, description: str) -> dg.AssetCheckSpec:
    with warnings.catch_warnings():  # partitioned checks are a "preview" feature; the version is pinned
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, blocking=True, partitions_def=generations, description=description)


COMP0_CHECK, COMP1_CHECK, COMP2_CHECK = "comp0_rules", "comp1_rules", "comp2_rules"


@dg.asset(partitions_def=generations, group_name=GROUP, io_manager_key="artifacts", kinds={"ply"},
          check_specs=[_spec(COMP0_CHECK, "comp0_splat", "A gaussian PLY: renderer fields, finite, Y-up, <=200 MB")])
def comp0_splat(context: dg.AssetExecutionContext, store: StoreResource, splats: SplatResource,
                gaussian_splat: GaussianCloud):
    """Comp 0's output: the splat as one PLY."""
    data = comp0_ply(gaussian_splat)
    verdict = check_comp0(data, splats.frame)
    entry = store.ledger().get(context.partition_key)
    yield dg.Output(data, metadata={**describe(entry), **_deadline_metadata(context), **_verdict(verdict),
                                    "bytes_out": len(data), "gaussians": len(gaussian_splat)})
    yield _check_result(COMP0_CHECK, verdict)


@dg.asset(partitions_def=generations, group_name=GROUP, io_manager_key="artifacts", kinds={"glb"},
          check_specs=[_spec(COMP1_CHECK, "comp1_mesh", "A GLB that loads as exactly one mesh within +-0.6, Y-up, <=200 MB")])
def comp1_mesh(context: dg.AssetExecutionContext, store: StoreResource, refined_mesh):
    """Comp 1's output: the refined mesh centred and scaled into +-0.5, as one GLB."""
    data = comp1_glb(refined_mesh)
    verdict = check_comp1(data)
    entry = store.ledger().get(context.partition_key)
    yield dg.Output(data, metadata={**describe(entry), **_deadline_metadata(context), **_verdict(verdict),
                                    "bytes_out": len(data)})
    yield _check_result(COMP1_CHECK, verdict)


@dg.asset(partitions_def=generations, group_name=GROUP, io_manager_key="artifacts", kinds={"javascript"},
          check_specs=[_spec(COMP2_CHECK, "comp2_module", "Every static and runtime rule of the threejs output "
                                                          "specification, run in Node with three@0.183.2")])
def comp2_module(context: dg.AssetExecutionContext, store: StoreResource, round_state: RoundsResource,
                 comp2: Comp2Resource, refined_mesh):
    """Comp 2's output: ``{stem}.js``, a module whose ``generate(THREE)`` rebuilds the refined mesh (the embedded
    backend) or a code model wrote for the prompt; either way checked against every rule."""
    from ..rounds.comp2_backend import write_module  # the embedded generator and the model slot (their own modules)
    from ..rounds.comp2_generate import Comp2Error

    limits = round_state.comp2_rules.limits()
    entry = store.ledger().get(context.partition_key)
    llm, prompt, image_png = comp2.llm(), "", None
    if llm is not None:
        asked = store.ledger().prompt(entry.key)
        prompt, image_png = (asked.text, None) if asked.kind == "text" else ("", png_bytes(stored_image(asked.image)))
    try:
        written = write_module(refined_mesh, lambda data: check_module(data, limits), limits.literal_bytes, llm,
                               prompt, image_png, entry.seed, comp2.fallback, context.log.warning)
    except CheckerError as exc:  # no verdict is never a pass
        raise dg.Failure(f"comp2_module: {exc}") from exc
    except (LlmError, Comp2Error) as exc:
        raise dg.Failure(f"comp2_module: {exc}") from None
    yield dg.Output(written.data, metadata={**describe(entry), **_deadline_metadata(context),
                                            **_verdict(written.report), "bytes_out": len(written.data),
                                            "backend": written.backend, **written.info})
    yield _check_result(COMP2_CHECK, written.report)


OUTPUTS = (comp0_splat, comp1_mesh, comp2_module)
PROFILE_JOBS = tuple(dg.define_asset_job(
    f"sn17_comp{n}", selection=dg.AssetSelection.assets(output).upstream(),
    executor_def=dg.in_process_executor,
    description=f"One prompt of an SN17 round for competition {n}: the pipeline up to {output.key.path[-1]} "
                "and its blocking rules check") for n, output in enumerate(OUTPUTS))


def _requests(context, progress, record: dict, competition: int) -> list[dg.RunRequest]:
    """A run for each registered stem of the round that has none yet (one query for the round's runs)."""
    number = record["round"]
    have = {r.dagster_run.tags.get(TAG_STEM) for r in context.instance.get_run_records(
        dg.RunsFilter(tags={TAG_ROUND: str(number)}))}
    tags = {"threegen/source": "sn17-round", TAG_ROUND: str(number), TAG_COMP: str(competition),
            TAG_DEADLINE: record["deadline"], "threegen/round_deadline_unix": str(round(record["deadline_at"])),
            TAG_DEADLINE_BLOCK: str(record["schedule"]["generation_deadline_block"])}
    return [dg.RunRequest(run_key=f"round:{number}:{stem}", partition_key=key, job_name=f"sn17_comp{competition}",
                          tags={**tags, TAG_STEM: stem})
            for stem, key in sorted(progress.registered.items()) if stem not in have]


def _round_event(progress, record: dict) -> dg.AssetMaterialization:
    rows = "\n".join(f"| {stem} | {key} |" for stem, key in sorted(progress.registered.items()))
    given_up = "\n".join(f"- {error}" for error in progress.given_up.values())
    return dg.AssetMaterialization(asset_key="sn17_round", partition=str(record["round"]), metadata={
        "seed": record["seed"], "prompts": len(record["stems"]), "registered": len(progress.registered),
        "given_up": len(progress.given_up), "waiting": len(record["stems"]) - len(progress.registered) - len(progress.given_up),
        "deadline": record["deadline"], "deadline_block": record["schedule"]["generation_deadline_block"],
        "seen_at": iso(record["seen_at"]), "seconds_per_block": record["seconds_per_block"],
        "prompt_keys": dg.MetadataValue.md(f"| stem | generation |\n|---|---|\n{rows}" if rows else "(none yet)"),
        "errors": dg.MetadataValue.md(given_up or "(none)")})


@dg.sensor(jobs=list(PROFILE_JOBS), minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Reads SN17's round state; when a round enters miner_generation, registers its image prompts "
                       "with the round's seed and launches one run per prompt for the competition profile")
def sn17_round_sensor(context: dg.SensorEvaluationContext, store: StoreResource, round_state: RoundsResource):
    source = round_state.round_source()
    state = source.state()  # a bad or unreachable state file fails the tick, naming it
    number = state.current_round
    if state.stage != "miner_generation":
        return dg.SkipReason(f"round {number} is {state.stage}; waiting for miner_generation")
    book = RoundBook(store.store())
    record = book.open_round(number, source.seed(number), source.schedule(number), source.prompts(number),
                             seconds_per_block=round_state.seconds_per_block, margin_s=round_state.margin_s)
    if time.time() > record["deadline_at"]:
        return dg.SkipReason(f"round {number}: its deadline ({record['deadline']}) has passed; nothing more is started")
    progress = register_prompts(book, store.ledger(), record, limits=round_state.image_limits(),
                                per_tick=round_state.prompts_per_tick, workers=round_state.fetch_workers,
                                max_tries=round_state.prompt_tries)
    for stem in progress.given_up_now:
        context.log.error(f"round {number}: given up after {round_state.prompt_tries} tries: {progress.given_up[stem]}")
    for error in progress.retrying.values():
        context.log.warning(f"round {number}: {error} (tried again next tick)")
    requests = _requests(context, progress, record, round_state.competition)
    context.log.info(f"round {number}: {len(requests)} run(s) requested, {len(progress.registered)} of "
                     f"{len(record['stems'])} prompts registered, {len(progress.given_up)} given up, "
                     f"{progress.untried} left for the next ticks; deadline {record['deadline']}")
    return dg.SensorResult(
        run_requests=gpu_tagged(requests),
        dynamic_partitions_requests=[rounds.build_add_request([str(number)]),
                                     generations.build_add_request(sorted({r.partition_key for r in requests}))]
        if requests else [],
        asset_events=[_round_event(progress, record)] if progress.changed or requests else [])


ASSETS = [sn17_round, *OUTPUTS]
JOBS = list(PROFILE_JOBS)
