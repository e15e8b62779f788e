"""What the demo path imports: loading the definitions, running the embedded pipeline for one
generation and refreshing the catalog, in a fresh process, never imports the model libraries
(torch, diffusers, transformers), bittensor, or the S3 client (dagster_aws, boto3) for a local
store, nor pandas; so `make demo`'s lean install (pyproject's base dependencies) is enough for it.
An s3:// store does import dagster_aws, when its store is opened."""

import json
import os
import subprocess
import sys
import textwrap

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "bittensor", "dagster_aws", "boto3", "botocore",
         "pandas", "open_clip", "rembg", "onnxruntime", "kubernetes")

PROGRAM = textwrap.dedent("""
    import json, sys
    from threegen_dagster import cli

    status = cli.main(["generate", "a wooden chair", "--seed", "42", "--json"]) or cli.main(["stats", "--json"])
    heavy = sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)
    status = status or cli.main(["catalog"])  # the markdown listing: no pandas either
    print("RESULT " + json.dumps({"status": status, "heavy": heavy, "pandas": "pandas" in sys.modules}))
""")


def run(code: str, cwd, env: dict, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.rsplit("RESULT ", 1)[1])


def test_the_demo_path_imports_nothing_heavy(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREEGEN_", "DAGSTER_HOME", "AWS_"))}
    env["THREEGEN_GAUSSIANS"] = "20000"
    result = run(PROGRAM, tmp_path, env, json.dumps(HEAVY))
    assert result == {"status": 0, "heavy": [], "pandas": False}
    assert (tmp_path / "artifacts" / "index" / "catalog").is_dir()  # the run really went through


def test_an_s3_store_brings_in_the_s3_client_when_opened(tmp_path) -> None:
    code = textwrap.dedent("""
        import json, sys
        from threegen_dagster.definitions import build_definitions
        from threegen_dagster.settings import Settings
        store = build_definitions(Settings(store="s3://bucket/p", inbox=".", s3_endpoint="http://127.0.0.1:9")
                                  ).resources["store"]
        before = "dagster_aws" in sys.modules
        store.store()  # builds the client; nothing is contacted yet
        print("RESULT " + json.dumps({"before": before, "after": "dagster_aws" in sys.modules}))
    """)
    assert run(code, tmp_path, dict(os.environ)) == {"before": False, "after": True}
