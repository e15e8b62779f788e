"""One prompt of a batch through the project's pipeline: the image fetched with the round's bounds
(``rounds/prompts.py``: bytes, time, tries, a sha256 stem checked against the image, the image's own
checks), registered like any generation (ledger and ``generations`` partition), then the competition
profile's job (``sn17_comp{N}``, the round pipeline's) executed in this process against the Dagster
instance at DAGSTER_HOME. Every run carries ``threegen/serve_batch`` (the batch) and ``threegen/stem``,
so a batch shows in the UI's Runs like any generation. Models are loaded once, at warm-up, through the
same stage resources the runs use. Dagster is imported when the server warms up, not before.
"""

from __future__ import annotations

from ..processes import identity_tags
from ..rounds.comp2_check import INSTALL_HINT, checker_ready
from ..rounds.prompts import ImageLimits, PromptFetchError, fetch_prompt
from ..rounds.state import PromptUrl
from ..settings import Settings
from ..stores import OpenedStore
from .batch import GenerationFailed

# competition -> (the output asset, the file extension in the results ZIP)
OUTPUTS = {0: ("comp0_splat", "ply"), 1: ("comp1_mesh", "glb"), 2: ("comp2_module", "js")}
MODEL_STAGES = ("text_to_image", "background", "image_to_mesh", "refine")
TAG_BATCH = "threegen/serve_batch"
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class PipelineGenerator:
    """The generator ``batch.run_loop`` drives: warm once, then one prompt per call."""

    def __init__(self, settings: Settings, image_limits: ImageLimits | None = None) -> None:
        self.settings = settings
        self.competition = settings.competition
        self.asset, self.ext = OUTPUTS[self.competition]
        self.image_limits = image_limits or ImageLimits(max_pixels=settings.max_image_pixels)
        self.opened = OpenedStore.from_settings(settings)
        self.defs = self.instance = self.job = None

    def warm(self) -> None:
        """The instance, the definitions, each model stage's engine loaded, and for comp 2 the Node checker."""
        from ..definitions import build_definitions
        from ..defs.instance import get_instance
        from ..runs import free_dead_runs

        if self.competition == 2 and not checker_ready():
            raise RuntimeError(f"the comp 2 checker is not installed: {INSTALL_HINT}")
        self.instance = get_instance()
        for freed in free_dead_runs(self.instance):  # a run this server left when it was killed mid-prompt
            print(f"threegen serve: {freed.line()}", flush=True)
        self.defs = build_definitions(self.settings)
        self.job = self.defs.resolve_job_def(f"sn17_comp{self.competition}")
        resources = self.defs.resources
        for stage in MODEL_STAGES:
            resources[stage].engine()  # built and loaded once per process (backends/registry.py)

    def generate(self, batch: str, stem: str, url: str, seed: int) -> tuple[str, int]:
        from ..cli_generate import register_in
        from ..runs import failures

        try:
            prompt = fetch_prompt(PromptUrl(stem=stem, url=url), self.image_limits)
        except PromptFetchError as exc:
            raise GenerationFailed(str(exc)) from None
        entry, _, _ = register_in(self.opened.ledger(), prompt, seed, "serve", self.instance)
        tags = {"threegen/source": "serve", TAG_BATCH: batch, "threegen/stem": stem,
                "threegen/competition": str(self.competition), **identity_tags()}
        result = self.job.execute_in_process(instance=self.instance, partition_key=entry.key, run_config=QUIET_RUN,
                                             raise_on_error=False, tags=tags)
        if not result.success:
            causes = "; ".join(f.line() for f in failures(result.all_events)) or "the run failed"
            raise GenerationFailed(f"run {result.run_id}: {causes}")
        manifest = self.opened.artifacts().latest(entry.key, self.asset, run_id=result.run_id)
        if manifest is None:
            raise GenerationFailed(f"run {result.run_id} stored no {self.asset}")
        return entry.key, manifest.version

    def read(self, stem: str, key: str, version: int) -> bytes:
        """A done stem's output, the version its batch made (hash-verified by the store)."""
        return self.opened.artifacts().load(key, self.asset, version)[1]
