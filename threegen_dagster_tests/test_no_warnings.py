"""The project's own commands print no deprecation, beta or other warnings: the threegen CLI, Dagster's
`dg check defs` / `dg list defs` / `dg launch` on the [tool.dg] project (the venv active, as the README
says), and `make ui` (`dg dev`: webserver, code server, daemon and its sensor ticks), each in a
subprocess with a temporary DAGSTER_HOME and store. (The README's CI sequence, `dg launch --job` and
`--assets '*'` are checked the same way in test_ci_sequence.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .test_ci_sequence import BIN, ROOT, WARNING, environment, run


def warnings_in(*outputs: str) -> list[str]:
    return [line for output in outputs for line in output.splitlines() if WARNING.search(line)]


def activated(tmp: Path) -> dict[str, str]:
    """``. .venv/bin/activate`` with DAGSTER_HOME and the store in ``tmp``."""
    env = environment(tmp, DAGSTER_HOME=str(tmp / "home"), VIRTUAL_ENV=str(BIN.parent))
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_pattern_finds_the_warnings_seen_before() -> None:
    seen = ["/x/sensor_definition.py:809: BetaWarning: Parameter `owners` of initializer ...",
            "2026-11-30 15:58:33 +0000 - dagster - WARNING - Found a dagster instance configuration value ...",
            "To suppress this warning, add \"project_and_activated_venv_mismatch\" to ...",
            "x.py:1: DeprecationWarning: ...", "x.py:1: PreviewWarning: ..."]
    assert warnings_in("\n".join(seen)) == seen
    assert warnings_in("a-red-mug-10a5c24afb-s3: succeeded, score 0.968 (threshold 0.6) passed") == []


def test_threegen_commands_print_no_warning(tmp_path) -> None:
    env = activated(tmp_path)
    threegen = str(BIN / "threegen")
    outputs = []
    for args in (["add", "a small cup", "--seed", "1"], ["generate", "a small cup", "--seed", "1"],
                 ["catalog"], ["stats"], ["versions", "a-small-cup-s1"], ["launch", "Not A Key"]):
        if args[0] == "versions":  # the key `add` printed
            args = ["versions", outputs[0].stdout.split(": ")[1].strip()]
        outputs.append(run([threegen, *args], env))
    assert [o.returncode for o in outputs] == [0, 0, 0, 0, 0, 2], [o.stderr[-2000:] for o in outputs]
    assert "validation_score" in outputs[4].stdout  # the generation ran
    assert warnings_in(*(o.stdout + o.stderr for o in outputs)) == []


def test_dg_check_and_list_defs_print_no_warning(tmp_path) -> None:
    env = activated(tmp_path)
    run([str(BIN / "python"), "-m", "threegen_dagster.defs.instance"], env)  # as the README's sequence does
    check = run([str(BIN / "dg"), "check", "defs"], env)
    listing = run([str(BIN / "dg"), "list", "defs"], env)
    assert check.returncode == 0 and "All definitions loaded successfully." in check.stdout + check.stderr, check.stderr
    assert listing.returncode == 0 and "validation_score" in listing.stdout, listing.stderr
    assert warnings_in(check.stdout, check.stderr, listing.stdout, listing.stderr) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_ui_prints_no_warning(tmp_path) -> None:
    """`make ui` until the webserver serves and the daemon has ticked every sensor, then Ctrl-C."""
    env = activated(tmp_path)
    env.pop("VIRTUAL_ENV")  # make ui activates the venv itself
    log = tmp_path / "ui.log"
    with log.open("w") as out:  # -o: never re-run the set-up here (pip would print its own output)
        ui = subprocess.Popen(["make", "-o", ".venv/.installed", "ui", f"UI_PORT={_free_port()}"], cwd=ROOT,
                              env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    sensors = ("inbox_sensor", "sn17_task_sensor", "sn17_submission_sensor")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and ui.poll() is None:
            text = log.read_text()
            if "Serving dagster-webserver" in text and all(f"sensor: {s}" in text for s in sensors):
                break
            time.sleep(2)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C, as a person stops it
            try:
                ui.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait()
    text = log.read_text()
    assert "Serving dagster-webserver" in text and all(f"sensor: {s}" in text for s in sensors), text[-4000:]
    assert warnings_in(text) == []
