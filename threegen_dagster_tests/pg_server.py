"""A real PostgreSQL server on loopback for the tests: Debian's ``postgresql`` package
(``scripts/install_postgres.sh`` installs it), run from its own binaries in a fresh data folder, as
an unprivileged user, listening on 127.0.0.1 only, on a free port; stopped and removed afterwards.

The tests start it once per session (``pg_server`` below, used through conftest.py) and give each
test a database of its own (``PgServer.create_database``). By hand::

    .venv/bin/python -m threegen_dagster_tests.pg_server      # prints the env to use; Ctrl-C stops it
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

USER = "threegen"
RUN_AS = "postgres"  # the unprivileged account Debian's package creates; used when the tests run as root


def pg_bindir() -> Path:
    """The newest installed server's binaries (/usr/lib/postgresql/<version>/bin), else those on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and Path(on_path).with_name("initdb").exists():
        return Path(on_path).resolve().parent
    raise RuntimeError("no PostgreSQL server is installed: run scripts/install_postgres.sh (as root)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _owner_mark(pid: int) -> str:
    """The owning process, told apart from a later process that reuses its pid by its start time."""
    import psutil

    try:
        return f"{pid} {psutil.Process(pid).create_time()}"
    except psutil.NoSuchProcess:
        return ""


def stop_orphans() -> None:
    """Stop and remove the servers of test sessions that were killed before they could stop theirs
    (pg_ctl detaches the server, so it outlives a killed pytest); a live owner's server is left alone."""
    for owner in Path(tempfile.gettempdir()).glob("threegen-pg-*/owner"):
        mark = owner.read_text().strip()
        if not mark or _owner_mark(int(mark.split()[0])) == mark:
            continue
        import psutil

        data = str(owner.parent / "data")
        for proc in psutil.process_iter(["name", "cmdline"]):  # its postmaster: started on that data folder
            if proc.info["name"] == "postgres" and data in (proc.info["cmdline"] or []):
                try:
                    proc.send_signal(signal.SIGQUIT)  # postgres: immediate shutdown, children included
                    proc.wait(10)
                except psutil.Error:
                    pass
        shutil.rmtree(owner.parent, ignore_errors=True)


class PgServer:
    """``initdb`` + ``pg_ctl start`` in a temporary folder; ``stop`` stops the server and removes it."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="threegen-pg-"))
        self.port = 0
        self.running = False
        self.password = secrets.token_urlsafe(18)  # this throw-away server's, never a real credential
        self.as_root = os.geteuid() == 0
        if self.as_root:  # postgres refuses to run as root: the folder belongs to the package's user
            try:
                account = pwd.getpwnam(RUN_AS)
            except KeyError:
                shutil.rmtree(self.root)
                raise RuntimeError(f"running as root, and there is no {RUN_AS!r} user to run PostgreSQL as "
                                   "(Debian's postgresql package creates it: scripts/install_postgres.sh)") from None
            os.chown(self.root, account.pw_uid, account.pw_gid)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", RUN_AS, "--"] if self.as_root else []
        return subprocess.run(prefix + list(args), check=True, capture_output=True, text=True, cwd=self.root, **kwargs)

    def start(self, timeout: float = 60.0) -> PgServer:
        stop_orphans()
        (self.root / "owner").write_text(_owner_mark(os.getpid()))
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_root:
            shutil.chown(pwfile, RUN_AS)
        try:  # scram passwords over TCP; the unix socket lives in our folder only, and trusts its owner
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-instructions")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.strip()[-2000:]}") from None
        finally:
            pwfile.unlink()
        self.port = _free_port()
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        try:
            self._run(str(self.bindir / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.root / "server.log"),
                      "-o", options, "-w", "-t", str(int(timeout)))
        except subprocess.CalledProcessError as exc:
            log = (self.root / "server.log").read_text()[-2000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {exc.stderr.strip()[-1000:]} {log}") from None
        self.running = True
        deadline = time.monotonic() + timeout
        while True:  # pg_ctl -w waited for the socket; wait for TCP too
            try:
                self.connect("postgres").close()
                return self
            except Exception:  # noqa: BLE001 - not accepting yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not accept connections within {timeout:.0f} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.running:
            try:
                self._run(str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w")
            except subprocess.CalledProcessError:
                pid = self.data / "postmaster.pid"
                if pid.exists():
                    os.kill(int(pid.read_text().split()[0]), signal.SIGKILL)
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, db_name: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=self.password, dbname=db_name,
                                connect_timeout=5)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database: each test's Dagster instance sees only its own runs."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        conn = self.connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return name

    def env(self, db_name: str) -> dict[str, str]:
        """What deploy/dagster.postgres.yaml reads (``env:``) to reach this server's ``db_name``."""
        return {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_USER": USER,
                "DAGSTER_PG_PASSWORD": self.password, "DAGSTER_PG_DB": db_name}

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = PgServer().start()
    except RuntimeError as exc:
        pytest.fail(f"cannot start the test PostgreSQL server: {exc}")
    yield server
    server.stop()


def main() -> None:
    with PgServer() as server:
        db = server.create_database("dagster")
        print(f"PostgreSQL {server.bindir.parts[-2]} up on 127.0.0.1:{server.port}, data in {server.root}; to use it:")
        for name, value in server.env(db).items():
            print(f"  export {name}={value}")
        print("  and a DAGSTER_HOME whose dagster.yaml is deploy/dagster.postgres.yaml")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
