"""The README's "CI with Dagster's CLI" sequence, run exactly as the README shows it (the bash block
is read from README.md) in a subprocess on a fresh instance with no daemon: it exits 0 and the store
holds every stage of each generation; a blocking score check that fails makes it exit non-zero.
Also: a selection mixing the stages with the unpartitioned catalog runs the catalog after the score,
what Dagster does with `*` and `group:`, and `threegen launch`
refuses unknown keys in one line each before anything runs (Dagster's own CLI cannot)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.catalog import STAGES
from threegen_dagster.ledger import Ledger
from threegen_dagster.storage import LocalStore

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WARNING = re.compile(r"\w*Warning\b|WARNING|To suppress this warning")


def ledger_keys(tmp: Path) -> list[str]:
    return sorted(entry.key for entry in Ledger(LocalStore(tmp / "store")).all())


def readme_ci_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## CI with Dagster's CLI", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def environment(tmp: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any THREEGEN_* or DAGSTER_HOME, a store and TMPDIR in ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_") and k != "DAGSTER_HOME"}
    (tmp / "tmp").mkdir(exist_ok=True)
    env.update(THREEGEN_STORE=str(tmp / "store"), THREEGEN_INBOX=str(tmp / "inbox"), TMPDIR=str(tmp / "tmp"),
               THREEGEN_GAUSSIANS="8000", **extra)  # 8000: over the validator's 7000 minimum, quicker
    return env


def run(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, **kw)


def the_fresh_home(tmp: Path) -> Path:
    (home,) = [p for p in (tmp / "tmp").iterdir() if p.is_dir() and (p / "dagster.yaml").exists()]
    return home


def generate_runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [r for r in instance.get_runs() if r.job_name == "generate"]


def test_the_readme_sequence_generates_every_prompt_on_a_fresh_instance(tmp_path) -> None:
    block = readme_ci_block()
    assert "dg launch --job generate" in block and "threegen add" in block and "mktemp -d" in block
    done = run(["bash", "-c", block], environment(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    keys = ledger_keys(tmp_path)
    assert len(keys) == 2 and all(key.endswith("-s1") for key in keys)
    artifacts = ArtifactStore(LocalStore(tmp_path / "store"))
    for key in keys:
        assert [stage for stage in STAGES if artifacts.latest(key, stage) is None] == [], key
        assert key in done.stdout  # the catalog summary names each generation ...
    assert done.stdout.count("complete") >= 2  # ... as complete
    runs = generate_runs(the_fresh_home(tmp_path))  # the instance mktemp made, and only it
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(keys)
    assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    assert "STEP_START" not in done.stderr  # .ci/quiet-run.yaml: no DEBUG step events on the console
    assert [line for line in (done.stdout + done.stderr).splitlines() if WARNING.search(line)] == []


def test_a_failing_blocking_check_fails_the_sequence(tmp_path) -> None:
    done = run(["bash", "-c", readme_ci_block()], environment(tmp_path, THREEGEN_SCORE_THRESHOLD="1.0"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "blocking asset check failed" in done.stderr and "score_meets_threshold" in done.stderr
    runs = generate_runs(the_fresh_home(tmp_path))
    assert len(runs) == 2 and {r.status for r in runs} == {dg.DagsterRunStatus.FAILURE}  # every prompt tried
    keys = ledger_keys(tmp_path)
    assert all(key in done.stdout for key in keys)  # the summary is printed all the same


def _step_events(home: Path, run_id: str) -> list[tuple[str, str]]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [(e.dagster_event.event_type_value, e.step_key) for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")]


def test_a_mixed_selection_runs_the_catalog_after_the_score(tmp_path) -> None:
    """The stages (partitioned) and the catalog (unpartitioned) in one run: the catalog comes last."""
    home = tmp_path / "home"
    env = environment(tmp_path, DAGSTER_HOME=str(home), VIRTUAL_ENV=str(BIN.parent))
    key = run([str(BIN / "threegen"), "add", "a green teapot", "--seed", "2", "--quiet"], env).stdout.strip()
    done = run([str(BIN / "dg"), "launch", "--assets", "*generation_catalog", "--partition", key], env)
    assert done.returncode == 0, done.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (generation_run,) = instance.get_runs()
    events = _step_events(home, generation_run.run_id)
    order = [step for kind, step in events if kind == "STEP_START"]
    assert order.index("generation_catalog") > order.index("validation_score"), order
    assert ("STEP_SUCCESS", "validation_score") in events[:events.index(("STEP_START", "generation_catalog"))]
    assert ("STEP_SUCCESS", "generation_catalog") in events and len(order) == 8  # seven stages, the catalog
    assert [line for line in done.stderr.splitlines() if WARNING.search(line)] == []


def test_what_dagster_s_cli_does_with_star_and_groups(tmp_path) -> None:
    """`*` with a partition is refused by Dagster (two partitioned families: generations and SN17
    rounds); `group:` parses without a warning (defs/dagster_warnings.py) and meets the partition check."""
    env = environment(tmp_path, DAGSTER_HOME=str(tmp_path / "home"), VIRTUAL_ENV=str(BIN.parent))
    (tmp_path / "home").mkdir()
    star = run([str(BIN / "dg"), "launch", "--assets", "*", "--partition", "a-red-mug-0123456789-s1"], env)
    group = run([str(BIN / "dg"), "launch", "--assets", "group:generation", "--partition", "a-red-mug-0123456789-s1"],
                env)
    assert star.returncode == 1 and star.stderr.strip().splitlines()[-1] == (
        "dagster_shared.check.functions.CheckError: Failure condition: There is no PartitionsDefinition shared by "
        "all the provided assets")
    assert group.returncode == 1 and "partition key `a-red-mug-0123456789-s1`" in group.stderr.strip().splitlines()[-1]
    assert [line for line in (star.stderr + group.stderr).splitlines() if WARNING.search(line)] == []


def test_threegen_launch_refuses_unknown_keys_in_one_line_each_and_launches_nothing(tmp_path) -> None:
    home = tmp_path / "home"
    env = environment(tmp_path, DAGSTER_HOME=str(home))
    done = run([str(BIN / "threegen"), "launch", "a-red-mug-0123456789-s1", "Bad Key", "a-blue-vase-s3"], env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "threegen: no generation 'a-red-mug-0123456789-s1' in the ledger: register it first (`threegen add "
        "PROMPT --seed N`, or the request_generations job in the UI), or check the key",
        "threegen: 'Bad Key' is not a generation key: type lower-case words and a seed like bad-key-s0, or "
        "request the prompt with the request_generations job (or `threegen add`)",
        "threegen: nothing launched (2 of 3 keys refused)",
    ]
    assert ledger_keys(tmp_path) == []  # the good readable key was not registered either
    assert not home.exists()  # no instance was even opened: no partition, no run


def test_dagster_s_own_cli_refuses_an_unknown_key_with_a_traceback(tmp_path) -> None:
    """What `threegen launch` stands in for: Dagster's message is the last of ~50 lines (README)."""
    env = environment(tmp_path, DAGSTER_HOME=str(tmp_path / "home"), VIRTUAL_ENV=str(BIN.parent))
    (tmp_path / "home").mkdir()
    done = run([str(BIN / "dg"), "launch", "--job", "generate", "--partition", "a-red-mug-0123456789-s1"], env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == ("dagster._core.errors.DagsterUnknownPartitionError: Could not find a partition with key "
                         "`a-red-mug-0123456789-s1`.") and len(lines) > 20


def test_threegen_launch_registers_a_readable_key_runs_it_and_sums_it_up(tmp_path) -> None:
    home = tmp_path / "home"
    env = environment(tmp_path, DAGSTER_HOME=str(home))
    done = run([str(BIN / "threegen"), "launch", "a-blue-vase-s3", "--log-level", "warning"], env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r"a-blue-vase-s3: succeeded, score 0\.\d{3} \(threshold 0\.6\) passed\n", done.stdout)
    assert Ledger(LocalStore(tmp_path / "store")).get("a-blue-vase-s3").prompt == "a blue vase"
    (launched,) = generate_runs(home)
    assert launched.tags["dagster/partition"] == "a-blue-vase-s3" and launched.status == dg.DagsterRunStatus.SUCCESS
    assert [line for line in done.stderr.splitlines() if WARNING.search(line)] == []
    # a fresh instance over the same store (CI with a kept store): the ledger's key gets its partition
    again = run([str(BIN / "threegen"), "launch", "a-blue-vase-s3", "--log-level", "warning"],
                {**env, "DAGSTER_HOME": str(tmp_path / "home2")})
    assert again.returncode == 0 and again.stdout.startswith("a-blue-vase-s3: succeeded, score "), again.stderr[-3000:]
    assert [r.status for r in generate_runs(tmp_path / "home2")] == [dg.DagsterRunStatus.SUCCESS]


def test_threegen_launch_fails_when_the_blocking_check_fails(tmp_path) -> None:
    home = tmp_path / "home"
    env = environment(tmp_path, DAGSTER_HOME=str(home), THREEGEN_SCORE_THRESHOLD="1.0")
    done = run([str(BIN / "threegen"), "launch", "a-blue-vase-s3", "--log-level", "error"], env)
    assert done.returncode == 1
    assert re.fullmatch(r"a-blue-vase-s3: FAILED \(dg launch exit 1\), score 0\.\d{3} \(threshold 1\.0\) failed\n",
                        done.stdout), done.stdout
