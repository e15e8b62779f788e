"""The one place that reads the environment. Every setting has a default that runs the
embedded CPU pipeline on local disk; each can be overridden by an environment variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .images import MAX_IMAGE_PIXELS
from .retention import RetentionPolicy
from .rounds.commitment import NETWORK, REVEAL_BLOCKS
from .rounds.comp2_llm import DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_S, LlmConfig
from .rounds.publish import CDN_PREFIX, CDN_URL
from .rounds.source import DEFAULT_BASE as ROUNDS_SOURCE
from .rounds.state import COMPETITION, ROUND_MARGIN_S, SECONDS_PER_BLOCK
from .sn17.decision import VALIDATION_THRESHOLD
from .sn17.validators import ValidatorPolicy
from .splats.mesh import DEFAULT_GAUSSIAN_COUNT
from .storage import StorageError, parse_s3_uri, redact_url


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    store: str
    """THREEGEN_STORE: a directory or s3://BUCKET[/PREFIX] for blobs, versions, the ledger, the catalog."""
    inbox: Path
    """THREEGEN_INBOX: folder the task sensor watches for JSON task files."""
    s3_endpoint: str | None = None
    """THREEGEN_S3_ENDPOINT: an S3-compatible server's URL (boto3's AWS_ENDPOINT_URL works too). A
    ``user:password@`` in it is dropped: botocore never uses it (requests are signed with the AWS keys),
    and kept it would show in the Dagster UI's resource config."""
    s3_region: str | None = None
    """AWS_REGION / AWS_DEFAULT_REGION, read here so the config shows it."""
    presign_seconds: int = 86_400
    """THREEGEN_PRESIGN_SECONDS: lifetime of the S3 download links in asset metadata."""
    retention: RetentionPolicy = RetentionPolicy()
    """THREEGEN_RETENTION_HOURS, THREEGEN_KEEP_PASSED_HOURS, THREEGEN_SLIM_HOURS, THREEGEN_KEEP_VERSIONS."""
    gaussians: int = DEFAULT_GAUSSIAN_COUNT
    """THREEGEN_GAUSSIANS: gaussians per splat."""
    score_threshold: float = VALIDATION_THRESHOLD
    """THREEGEN_SCORE_THRESHOLD: the blocking score check's threshold (default: SN17's acceptance threshold)."""
    frame: str = "y_up"
    """THREEGEN_FRAME: 'y_up' or 'y_down', the frame the splat is written in."""
    models: dict = field(default_factory=dict)
    """Per stage, the backend and its options: see ``models_from_env``."""
    validators: ValidatorPolicy = ValidatorPolicy()
    """THREEGEN_SN17_MIN_STAKE, _BLACKLIST (UIDs, comma-separated), _MIN_SUCCESS, _MAX_RESPONSE_S, _WINDOW,
    _MAX_PENDING (tasks from one validator not yet finished before it is not asked again)."""
    sn17: dict = field(default_factory=dict)
    """THREEGEN_WALLET_NAME, THREEGEN_WALLET_HOTKEY, THREEGEN_WALLET_PATH, THREEGEN_SN17_VARIANTS."""
    worker_url: str = ""
    """THREEGEN_WORKER_URL: a running `threegen worker` to send the model stages to; empty: in-process."""
    workers: tuple[str, ...] = ()
    """THREEGEN_WORKERS: a pool of `threegen worker`s (one per card), comma-separated URLs; each model stage
    goes to a free one. Set this or THREEGEN_WORKER_URL (one worker), not both."""
    gpu_run_tags: dict = field(default_factory=dict)
    """THREEGEN_GPU_RUN_TAGS: a YAML file of run tags (deploy/run-tags.gpu.yaml: `dagster-k8s/config` asking
    for a GPU) that every generation run a sensor launches carries; unset: none."""
    worker_timeout_s: float = 600.0
    """THREEGEN_WORKER_TIMEOUT: seconds to wait for one stage call."""
    free_gpu_between_stages: bool = False
    """THREEGEN_FREE_GPU: return cached GPU memory to the driver after every stage."""
    worker_host: str = "127.0.0.1"
    """THREEGEN_WORKER_HOST: the address `threegen worker` binds; anything but loopback must be asked for."""
    worker_max_body_mb: int = 128
    """THREEGEN_WORKER_MAX_BODY_MB: the largest request body the worker reads (base64 images, meshes, SPZ)."""
    worker_read_timeout_s: float = 30.0
    """THREEGEN_WORKER_READ_TIMEOUT: seconds a request (head and body) may take to arrive at the worker."""
    worker_max_connections: int = 32
    """THREEGEN_WORKER_MAX_CONNECTIONS: open connections and calls beyond this get HTTP 503."""
    max_image_pixels: int = MAX_IMAGE_PIXELS
    """THREEGEN_MAX_IMAGE_PIXELS: width x height bound on image prompts and on images sent to the worker."""
    rounds_source: str = ROUNDS_SOURCE
    """THREEGEN_ROUNDS_SOURCE: SN17's round state: the state repository's raw files (an http(s) URL) or a folder."""
    competition: int = COMPETITION
    """THREEGEN_COMPETITION: the competition profile a round's generations are made for: 0, 1 or 2."""
    seconds_per_block: float = SECONDS_PER_BLOCK
    """THREEGEN_SECONDS_PER_BLOCK: how long a chain block lasts, to turn the round's deadline block into a time."""
    round_margin_s: float = ROUND_MARGIN_S
    """THREEGEN_ROUND_MARGIN_S: seconds taken off the deadline for the state repository's delay in announcing a round."""
    comp2_backend: str = "embedded"
    """THREEGEN_COMP2_BACKEND: what writes comp 2 modules: 'embedded' (the mesh, encoded) or 'llm' (a code model)."""
    comp2_llm: LlmConfig | None = None
    """THREEGEN_COMP2_LLM_URL (OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1), _MODEL, _KEY (never
    shown), _ATTEMPTS, _TIMEOUT, _IMAGE (0: a text-only model); None when no URL is set."""
    comp2_fallback: bool = True
    """THREEGEN_COMP2_LLM_FALLBACK: 0 fails the run when the code model gives no module that passes (default 1:
    the embedded module from the mesh is written instead)."""
    chromium: str | None = None
    """THREEGEN_CHROMIUM: the Chromium the judge-style renders use; unset: Debian's /usr/bin/chromium."""
    cdn_prefix: str = CDN_PREFIX
    """THREEGEN_CDN_PREFIX: where a round's outputs are uploaded: s3://BUCKET[/PREFIX] (or a folder a web server serves)."""
    cdn_url: str = CDN_URL
    """THREEGEN_CDN_URL: that prefix's public base URL (validators fetch {cdn_url}/{stem}.js); also the committed cdn_url."""
    commitment: dict = field(default_factory=dict)
    """THREEGEN_SN17_REPO (owner/name), THREEGEN_SN17_COMMIT (40 hex), THREEGEN_REVEAL_BLOCKS, THREEGEN_SUBTENSOR_NETWORK:
    the round commitment's repo and commit, the blocks until its reveal, the chain."""
    audit_url: str = ""
    """THREEGEN_AUDIT_URL: the batch API server the self-audit drives (an image running `threegen serve`)."""
    duel_embed_model: str = ""
    """THREEGEN_DUEL_EMBED_MODEL: a DINO-family model (local folder or hub id) for the duel estimate and the
    audit's render similarity; unset: none (the duel falls back to the VLM alone)."""
    duel_vlm: LlmConfig | None = None
    """THREEGEN_DUEL_VLM_URL (OpenAI-compatible API root), _MODEL, _KEY (never shown), _TIMEOUT: the judge model
    the duel estimate asks; None when no URL is set."""

    @property
    def worker_urls(self) -> tuple[str, ...]:
        """Every GPU worker the model stages go to (THREEGEN_WORKERS, or THREEGEN_WORKER_URL alone)."""
        return self.workers or ((self.worker_url,) if self.worker_url else ())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        env = os.environ if env is None else env
        base = (cwd or Path.cwd()).resolve()

        def number(name: str, default: float, kind: type) -> float:
            raw = env.get(name, "")
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None

        frame = env.get("THREEGEN_FRAME", "y_up")
        if frame not in ("y_up", "y_down"):
            raise SettingsError(f"THREEGEN_FRAME={frame!r}: use 'y_up' or 'y_down'")
        store = env.get("THREEGEN_STORE", "") or "artifacts"
        if store.startswith("s3://"):
            try:
                parse_s3_uri(store)
            except StorageError as exc:
                raise SettingsError(f"THREEGEN_STORE: {exc.strerror}") from None
        else:
            store = str((base / store).expanduser().resolve())
        policy = RetentionPolicy()  # the one source of the retention defaults
        try:
            retention = RetentionPolicy(
                max_age_hours=number("THREEGEN_RETENTION_HOURS", policy.max_age_hours, float),
                keep_passed_hours=number("THREEGEN_KEEP_PASSED_HOURS", policy.keep_passed_hours, float),
                slim_after_hours=number("THREEGEN_SLIM_HOURS", policy.slim_after_hours, float),
                keep_versions=int(number("THREEGEN_KEEP_VERSIONS", policy.keep_versions, int)))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            store=store,
            inbox=(base / env.get("THREEGEN_INBOX", "inbox")).resolve(),
            s3_endpoint=redact_url(env.get("THREEGEN_S3_ENDPOINT", ""), mark="") or None,
            s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            presign_seconds=int(number("THREEGEN_PRESIGN_SECONDS", cls.presign_seconds, int)),
            retention=retention,
            gaussians=int(number("THREEGEN_GAUSSIANS", cls.gaussians, int)),
            score_threshold=number("THREEGEN_SCORE_THRESHOLD", cls.score_threshold, float),
            frame=frame,
            models=models_from_env(env),
            validators=validator_policy(env, number),
            sn17={k: v for k, v in {
                "wallet_name": env.get("THREEGEN_WALLET_NAME"), "wallet_hotkey": env.get("THREEGEN_WALLET_HOTKEY"),
                "wallet_path": env.get("THREEGEN_WALLET_PATH"),
                "variants": int(number("THREEGEN_SN17_VARIANTS", 1, int))}.items() if v is not None},
            worker_url=env.get("THREEGEN_WORKER_URL", "").rstrip("/"),
            workers=worker_pool(env),
            gpu_run_tags=run_tags_file(env.get("THREEGEN_GPU_RUN_TAGS", ""), base),
            worker_timeout_s=number("THREEGEN_WORKER_TIMEOUT", 600.0, float),
            free_gpu_between_stages=env.get("THREEGEN_FREE_GPU", "") in ("1", "true", "yes"),
            worker_host=env.get("THREEGEN_WORKER_HOST", "") or cls.worker_host,
            worker_max_body_mb=positive(env, "THREEGEN_WORKER_MAX_BODY_MB", cls.worker_max_body_mb, int),
            worker_read_timeout_s=positive(env, "THREEGEN_WORKER_READ_TIMEOUT", cls.worker_read_timeout_s, float),
            worker_max_connections=positive(env, "THREEGEN_WORKER_MAX_CONNECTIONS", cls.worker_max_connections, int),
            max_image_pixels=image_pixel_limit(env),
            rounds_source=rounds_source(env.get("THREEGEN_ROUNDS_SOURCE", ""), base),
            competition=competition(env),
            seconds_per_block=positive(env, "THREEGEN_SECONDS_PER_BLOCK", SECONDS_PER_BLOCK, float),
            round_margin_s=number("THREEGEN_ROUND_MARGIN_S", ROUND_MARGIN_S, float),
            comp2_backend=comp2_backend(env),
            comp2_llm=comp2_llm(env),
            comp2_fallback=env.get("THREEGEN_COMP2_LLM_FALLBACK", "1").lower() not in ("0", "false", "no"),
            chromium=env.get("THREEGEN_CHROMIUM") or None,
            cdn_prefix=cdn_prefix(env.get("THREEGEN_CDN_PREFIX", ""), base),
            cdn_url=env.get("THREEGEN_CDN_URL", "").rstrip("/") or CDN_URL,
            commitment={"repo": env.get("THREEGEN_SN17_REPO", ""), "commit": env.get("THREEGEN_SN17_COMMIT", ""),
                        "reveal_blocks": int(positive(env, "THREEGEN_REVEAL_BLOCKS", REVEAL_BLOCKS, int)),
                        "network": env.get("THREEGEN_SUBTENSOR_NETWORK", "") or NETWORK},
            audit_url=env.get("THREEGEN_AUDIT_URL", "").rstrip("/"),
            duel_embed_model=env.get("THREEGEN_DUEL_EMBED_MODEL", ""),
            duel_vlm=duel_vlm(env),
        )


def positive(env: Mapping[str, str], name: str, default: float, kind: type) -> float:
    """A positive number from ``env[name]``, or ``default`` when unset."""
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if not value > 0:
        raise SettingsError(f"{name}={raw!r} must be greater than 0")
    return value


MAX_WORKERS = 64


def worker_pool(env: Mapping[str, str]) -> tuple[str, ...]:
    """THREEGEN_WORKERS as distinct ``http(s)://host:port`` URLs (no path), each checked here."""
    from urllib.parse import urlsplit

    raw = env.get("THREEGEN_WORKERS", "").strip()
    if not raw:
        return ()
    if env.get("THREEGEN_WORKER_URL", ""):
        raise SettingsError("THREEGEN_WORKERS and THREEGEN_WORKER_URL are both set: list every worker in "
                            "THREEGEN_WORKERS and unset THREEGEN_WORKER_URL")
    urls = [u.strip().rstrip("/") for u in raw.replace(" ", ",").split(",") if u.strip()]
    if len(urls) > MAX_WORKERS:
        raise SettingsError(f"THREEGEN_WORKERS lists {len(urls)} workers; at most {MAX_WORKERS}")
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise SettingsError(f"THREEGEN_WORKERS: {url[:100]!r} is not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.path \
                or parts.query or parts.fragment or parts.username:
            raise SettingsError(f"THREEGEN_WORKERS: {url[:100]!r} is not a worker's address: "
                                f"use http://HOST:PORT, like http://10.0.0.5:8765")
    if len(set(urls)) != len(urls):
        twice = sorted({u for u in urls if urls.count(u) > 1})
        raise SettingsError(f"THREEGEN_WORKERS lists {', '.join(twice)} more than once")
    return tuple(urls)


MAX_RUN_TAGS_BYTES = 64 * 1024


def run_tags_file(path: str, base: Path) -> dict[str, str]:
    """The run tags in a YAML mapping file (tag -> a string, or a mapping sent as its JSON, as
    ``dagster-k8s/config`` is): {} when ``path`` is empty."""
    import json

    import yaml

    if not path:
        return {}
    file = (base / path).expanduser()
    try:
        if file.stat().st_size > MAX_RUN_TAGS_BYTES:
            raise SettingsError(f"THREEGEN_GPU_RUN_TAGS={path}: over {MAX_RUN_TAGS_BYTES:,} bytes")
        loaded = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise SettingsError(f"THREEGEN_GPU_RUN_TAGS={path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"THREEGEN_GPU_RUN_TAGS={path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, (str, dict))
                                               for k, v in loaded.items()):
        raise SettingsError(f"THREEGEN_GPU_RUN_TAGS={path}: a mapping of tag names to strings or mappings, "
                            f"like deploy/run-tags.gpu.yaml")
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in loaded.items()}


def rounds_source(raw: str, base: Path) -> str:
    """THREEGEN_ROUNDS_SOURCE: an http(s) URL as it is, a folder made absolute; unset: the state repository."""
    if not raw:
        return ROUNDS_SOURCE
    return raw.rstrip("/") if raw.startswith(("http://", "https://")) else str((base / raw).expanduser().resolve())


def cdn_prefix(raw: str, base: Path) -> str:
    """THREEGEN_CDN_PREFIX: an s3:// location as it is (checked), a folder made absolute; unset: none."""
    if not raw:
        return CDN_PREFIX
    if raw.startswith("s3://"):
        try:
            parse_s3_uri(raw)
        except StorageError as exc:
            raise SettingsError(f"THREEGEN_CDN_PREFIX: {exc.strerror}") from None
        return raw.rstrip("/")
    return str((base / raw).expanduser().resolve())


def competition(env: Mapping[str, str]) -> int:
    raw = env.get("THREEGEN_COMPETITION", "")
    if raw and raw not in ("0", "1", "2"):
        raise SettingsError(f"THREEGEN_COMPETITION={raw!r}: 0 (gaussian splats), 1 (meshes) or 2 (three.js modules)")
    return int(raw) if raw else COMPETITION


def gpu_run_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """THREEGEN_GPU_RUN_TAGS alone, read where no Settings is at hand (the sensors that launch generations)."""
    return run_tags_file((os.environ if env is None else env).get("THREEGEN_GPU_RUN_TAGS", ""), Path.cwd())


def comp2_backend(env: Mapping[str, str]) -> str:
    backend = env.get("THREEGEN_COMP2_BACKEND", "") or "embedded"
    if backend not in ("embedded", "llm"):
        raise SettingsError(f"THREEGEN_COMP2_BACKEND={backend!r}: 'embedded' or 'llm'")
    if backend == "llm" and not env.get("THREEGEN_COMP2_LLM_URL"):
        raise SettingsError("THREEGEN_COMP2_BACKEND=llm needs THREEGEN_COMP2_LLM_URL (and THREEGEN_COMP2_LLM_MODEL)")
    return backend


def comp2_llm(env: Mapping[str, str]) -> LlmConfig | None:
    """The code model's settings; the key is read here and kept only in the LlmConfig (never in its repr)."""
    url = env.get("THREEGEN_COMP2_LLM_URL", "")
    if not url:
        return None
    try:
        return LlmConfig(base_url=url.rstrip("/"), model=env.get("THREEGEN_COMP2_LLM_MODEL", ""),
                         api_key=env.get("THREEGEN_COMP2_LLM_KEY", ""),
                         attempts=int(positive(env, "THREEGEN_COMP2_LLM_ATTEMPTS", DEFAULT_ATTEMPTS, int)),
                         timeout_s=positive(env, "THREEGEN_COMP2_LLM_TIMEOUT", DEFAULT_TIMEOUT_S, float),
                         send_image=env.get("THREEGEN_COMP2_LLM_IMAGE", "1").lower() not in ("0", "false", "no"))
    except ValueError as exc:
        raise SettingsError(f"THREEGEN_COMP2_LLM_*: {exc}") from None


def duel_vlm(env: Mapping[str, str]) -> LlmConfig | None:
    """The duel's judge model (a vision model behind an OpenAI-compatible API); the key only in the LlmConfig."""
    url = env.get("THREEGEN_DUEL_VLM_URL", "")
    if not url:
        return None
    try:
        return LlmConfig(base_url=url.rstrip("/"), model=env.get("THREEGEN_DUEL_VLM_MODEL", ""),
                         api_key=env.get("THREEGEN_DUEL_VLM_KEY", ""), attempts=1, max_tokens=512,
                         timeout_s=positive(env, "THREEGEN_DUEL_VLM_TIMEOUT", DEFAULT_TIMEOUT_S, float))
    except ValueError as exc:
        raise SettingsError(f"THREEGEN_DUEL_VLM_*: {exc}") from None


def image_pixel_limit(env: Mapping[str, str] | None = None) -> int:
    """THREEGEN_MAX_IMAGE_PIXELS alone: image prompts are checked where no Settings is at hand
    (the inbox and SN17 sensors parse tasks with ``Prompt.from_image``)."""
    return int(positive(os.environ if env is None else env, "THREEGEN_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS, int))


def models_from_env(env: Mapping[str, str]) -> dict[str, tuple[str, dict]]:
    """stage -> (backend, options): the backend from the stage's variable (``stages.STAGES``:
    THREEGEN_TEXT_TO_IMAGE, ...; unset: the registry's first), its options from the variables its
    class declares (``env``: THREEGEN_FLUX_MODEL, ...); unset options keep the backend's own defaults."""
    from .backends.registry import BACKENDS
    from .backends.stages import STAGES

    models = {}
    for stage in STAGES.values():
        table = BACKENDS[stage.name]
        backend = env.get(stage.variable, "") or next(iter(table))
        if backend not in table:
            raise SettingsError(f"{stage.variable}={backend!r}: one of {', '.join(table)}")
        options = {}
        for option, (name, kind) in table[backend].env.items():
            raw = env.get(name, "")
            if not raw:
                continue
            if kind is bool:
                options[option] = raw.lower() in ("1", "true", "yes")
            else:
                try:
                    options[option] = kind(raw)
                except ValueError:
                    raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None
        models[stage.name] = (backend, options)
    return models


DEFAULT_POLICY = ValidatorPolicy()  # the one source of the validator policy's defaults


def validator_policy(env: Mapping[str, str], number) -> ValidatorPolicy:
    raw = env.get("THREEGEN_SN17_BLACKLIST")
    try:
        blacklist = frozenset(DEFAULT_POLICY.manual_blacklist if raw is None else {int(u) for u in raw.replace(" ", "").split(",") if u})
    except ValueError:
        raise SettingsError(f"THREEGEN_SN17_BLACKLIST={raw!r}: comma-separated UIDs, like '180,12'") from None
    return ValidatorPolicy(
        min_stake=number("THREEGEN_SN17_MIN_STAKE", DEFAULT_POLICY.min_stake, float), manual_blacklist=blacklist,
        min_success_rate=number("THREEGEN_SN17_MIN_SUCCESS", DEFAULT_POLICY.min_success_rate, float),
        max_mean_response_s=number("THREEGEN_SN17_MAX_RESPONSE_S", DEFAULT_POLICY.max_mean_response_s, float),
        window=int(number("THREEGEN_SN17_WINDOW", DEFAULT_POLICY.window, int)),
        max_pending=int(positive(env, "THREEGEN_SN17_MAX_PENDING", DEFAULT_POLICY.max_pending, int)))
