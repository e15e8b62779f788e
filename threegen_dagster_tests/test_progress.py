"""Progress inside a step: the contract (``report_progress`` / ``progress_to`` / ``ProgressLog`` in
backends/stages.py), the real backends reporting it (FLUX's denoising steps through diffusers'
``callback_on_step_end`` on a tiny random FLUX, Hunyuan3D-2's steps and clean-up passes on a tiny
checkpoint, the embedded renderer's rays, the scoring models' phases), a run's log carrying it, and the
CLI's progress bar over several seeds, shown on a terminal only."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image, ImageDraw

from threegen_dagster import cli
from threegen_dagster.backends.procedural import Procedural
from threegen_dagster.backends.stages import ProgressLog, progress_to, report_progress
from threegen_dagster.definitions import build_definitions
from threegen_dagster.keys import Prompt
from threegen_dagster.settings import Settings


def collect() -> tuple[list, callable]:
    seen: list[tuple[int, int, str]] = []
    return seen, lambda done, total, unit: seen.append((done, total, unit))


def test_progress_log_says_each_tenth_once_and_the_end() -> None:
    lines: list[str] = []
    log = ProgressLog(lines.append, "text_to_image")
    for step in range(1, 29):
        log(step, 28, "denoising steps")
    assert lines[0] == "text_to_image: 3/28 denoising steps (11%)" and lines[-1] == "text_to_image: 28/28 denoising steps (100%)"
    assert len(lines) == 10 and len({line.split("(")[1] for line in lines}) == 10
    few: list[str] = []
    schnell = ProgressLog(few.append, "flux")
    for step in (1, 2, 3, 4, 4):
        schnell(step, 4, "denoising steps")
    assert few == [f"flux: {n}/4 denoising steps ({n * 25}%)" for n in (1, 2, 3, 4)]  # the end said once


def test_each_unit_keeps_its_own_count_and_bad_totals_say_nothing() -> None:
    lines: list[str] = []
    log = ProgressLog(lines.append, "image_to_mesh")
    log(30, 30, "denoising steps")
    log(1, 3, "clean-up passes")
    log(3, 0, "chunks")
    assert lines == ["image_to_mesh: 30/30 denoising steps (100%)", "image_to_mesh: 1/3 clean-up passes (33%)"]


def test_reports_go_to_the_innermost_block_on_this_thread_only() -> None:
    outer, to_outer = collect()
    inner, to_inner = collect()
    other: list = []
    report_progress(1, 2)  # no block: nowhere, no error
    with progress_to(to_outer):
        report_progress(1, 2, "a")
        with progress_to(to_inner):
            report_progress(2, 2, "b")
            thread = threading.Thread(target=lambda: other.append(report_progress(1, 1, "c")))
            thread.start()
            thread.join()
        report_progress(2, 2, "a")
    assert outer == [(1, 2, "a"), (2, 2, "a")] and inner == [(2, 2, "b")] and other == [None]


def test_the_embedded_renderer_reports_rays_up_to_all_of_them() -> None:
    seen, to = collect()
    with progress_to(to):
        Procedural(size=96)("a red mug", 3)
    assert seen and all(total == 96 * 96 and unit == "rays traced" for _, total, unit in seen)
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and done[-1] == 96 * 96


def test_flux_reports_each_denoising_step(monkeypatch, tmp_path) -> None:
    for module in ("torch", "diffusers", "transformers"):
        pytest.importorskip(module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from threegen_dagster.backends.flux import FluxConfig, FluxTextToImage

    from .tiny_flux import build_tiny_flux

    flux = FluxTextToImage(FluxConfig(model=str(build_tiny_flux(tmp_path / "flux")), steps=3, size=64,
                                      dtype="float32", device="cpu", max_sequence_length=32))
    seen, to = collect()
    with progress_to(to):
        flux("a red mug", 1)
    flux.unload()
    assert seen == [(1, 3, "denoising steps"), (2, 3, "denoising steps"), (3, 3, "denoising steps")]


def test_hunyuan_reports_its_steps_and_clean_up_passes(monkeypatch, tmp_path) -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("hy3dgen") is None:
        pytest.skip("hy3dgen not installed (the README's GPU section)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from threegen_dagster.backends.hunyuan import HunyuanConfig, HunyuanShape

    from .tiny_hunyuan import build_tiny_hunyuan

    shape = HunyuanShape(HunyuanConfig(model=str(build_tiny_hunyuan(tmp_path / "h")), steps=3, octree_resolution=16,
                                       num_chunks=2000, dtype="float32", device="cpu"))
    cutout = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(cutout).ellipse((30, 20, 100, 110), fill=(200, 60, 40, 255))
    seen, to = collect()
    with progress_to(to):
        shape(cutout, 1)
    assert seen == [(1, 3, "denoising steps"), (2, 3, "denoising steps"), (3, 3, "denoising steps"),
                    (1, 3, "clean-up passes"), (2, 3, "clean-up passes"), (3, 3, "clean-up passes")]


def test_a_run_logs_its_stages_progress(tmp_path) -> None:
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox", gaussians=2000)
    definitions = build_definitions(settings)
    with dg.instance_for_test() as instance:
        entry, _ = cli.register(Prompt.from_text("a red mug"), 3, "test", settings, instance)
        result = definitions.resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=entry.key, run_config=cli.QUIET_RUN, raise_on_error=False)
        assert "generated_image" in {e.step_key for e in result.all_events if e.is_step_success}
        messages = [e.user_message for e in instance.all_logs(result.run_id) if e.step_key == "generated_image"]
    lines = [m for m in messages if m.startswith("text_to_image: ")]
    assert lines[-1] == "text_to_image: 262144/262144 rays traced (100%)"  # the renderer's 512 x 512
    assert 2 <= len(lines) <= 11


def _in_a_terminal(args: list[str], env: dict) -> str:
    """Run ``threegen ARGS`` with stdin/stdout/stderr on a pseudo-terminal; everything it printed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a 100-column terminal (a new pty has 0), then threegen on it
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.execve(sys.executable, [sys.executable, "-m", "threegen_dagster.cli", *args], env)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the terminal closed: the child is done
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    return out.decode("utf-8", "replace")


def test_the_cli_shows_a_bar_over_several_seeds_on_a_terminal_only(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_")},
           "DAGSTER_HOME": str(tmp_path / "dagster"), "THREEGEN_STORE": str(tmp_path / "store")}
    (tmp_path / "dagster").mkdir()
    shown = _in_a_terminal(["add", "a red mug", "--seeds", "1-3"], env)
    assert "add: 100%" in shown and "3/3" in shown, shown
    assert shown.count("registered: a-red-mug-") == 3
    piped = subprocess.run([sys.executable, "-m", "threegen_dagster.cli", "add", "a red mug", "--seeds", "1,2,3,4"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and piped.stderr == ""  # no bar in a pipe
    assert piped.stdout.splitlines() == [f"already registered: a-red-mug-{k}" for k in _keys(tmp_path, (1, 2, 3))] + \
        [f"registered: a-red-mug-{_keys(tmp_path, (4,))[0]}"]


def _keys(root: Path, seeds: tuple[int, ...]) -> list[str]:
    from threegen_dagster.keys import generation_key

    return [generation_key(Prompt.from_text("a red mug"), s).removeprefix("a-red-mug-") for s in seeds]
