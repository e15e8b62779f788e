"""The code-model slot against a real HTTP server on loopback that speaks OpenAI's /v1/chat/completions (a
scripted stand-in: no model runs here), with the real client, the real retry loop and the real comp 2 check
(Node, three@0.183.2)."""

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from threegen_dagster.rounds.comp2_check import check_module, checker_ready
from threegen_dagster.rounds.comp2_llm import LlmConfig, LlmError, extract_module, generate_with_llm

KEY = "sk-test-5f2c9a-secret"
BROKEN = """Here is the module:
```javascript
export default function generate(THREE) {
  const g = new THREE.Group();
  g.add(new THREE.Mesh(new THREE.BoxGeometry(0.4, 0.4, 0.4), new THREE.MeshLambertMaterial({ color: 0xff0000 })));
  g.rotation.y = Math.random();
  return g;
}
```"""
VALID = """Fixed:
```js
function leg(THREE, material, x, z) {
  const mesh = new THREE.Mesh(new THREE.CylinderGeometry(0.03, 0.03, 0.4), material);
  mesh.position.set(x, -0.25, z);
  return mesh;
}
export default function generate(THREE) {
  const g = new THREE.Group();
  const wood = new THREE.MeshStandardMaterial({ color: 0x8b5a2b });
  g.add(new THREE.Mesh(new THREE.BoxGeometry(0.6, 0.05, 0.6), wood));
  for (const [x, z] of [[-0.25, -0.25], [0.25, -0.25], [-0.25, 0.25], [0.25, 0.25]]) g.add(leg(THREE, wood, x, z));
  return g;
}
```"""

needs_node = pytest.mark.skipif(not checker_ready(), reason="the Node checker (three@0.183.2) is not installed: "
                                "run scripts/install_node_checker.sh (make test does)")


class FakeModel:
    """A loopback server answering /v1/chat/completions from a script of replies (a body string, or a
    (status, body) pair), recording each request's headers and JSON."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                reply = owner.replies.pop(0)
                status, text = reply if isinstance(reply, tuple) else (200, json.dumps(
                    {"id": "x", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                  "finish_reason": "stop"}]}))
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def config(url: str, attempts: int = 3) -> LlmConfig:
    return LlmConfig(base_url=url, model="qwen3-coder-test", api_key=KEY, attempts=attempts, timeout_s=30)


@needs_node
def test_a_failed_check_goes_back_to_the_model_and_its_fix_passes(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeModel([BROKEN, VALID]) as model:
        result = generate_with_llm(config(model.url), check_module, prompt="a wooden table", image_png=b"\x89PNG-ish",
                                   seed=7)
    assert result.report.ok and "function leg(THREE" in result.source and "```" not in result.source
    assert [a.number for a in result.attempts] == [1, 2] and result.attempts[1].failures == ()
    first_failures = " ".join(result.attempts[0].failures)
    assert "FORBIDDEN_THREE_API" in first_failures and "Math.random" in first_failures
    assert [r["path"] for r in model.requests] == ["/v1/chat/completions"] * 2
    assert all(r["auth"] == f"Bearer {KEY}" for r in model.requests)
    first, second = (r["body"] for r in model.requests)
    assert first["model"] == "qwen3-coder-test" and first["seed"] == 7 and first["temperature"] == 0
    assert first["messages"][0]["role"] == "system" and "51,200 bytes of literals" in first["messages"][0]["content"]
    parts = first["messages"][1]["content"]
    assert parts[0]["text"].endswith("a wooden table")
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    # the second request carries the whole conversation: the broken answer, then the check's rule codes
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == BROKEN
    assert "FORBIDDEN_THREE_API" in second["messages"][3]["content"]
    assert "MeshLambertMaterial" in second["messages"][3]["content"]
    assert KEY not in caplog.text and KEY not in repr(config(model.url))


@needs_node
def test_attempts_are_bounded_and_the_last_failure_is_named():
    with FakeModel([BROKEN, BROKEN, VALID]) as model:
        with pytest.raises(LlmError, match="failed the comp 2 check 2 time.*FORBIDDEN_THREE_API"):
            generate_with_llm(config(model.url, attempts=2), check_module, prompt="a red box")
    assert len(model.requests) == 2 and model.replies == [VALID]


@needs_node
def test_text_only_models_get_no_image():
    with FakeModel([VALID]) as model:
        text_only = LlmConfig(base_url=model.url, model="m", send_image=False)
        result = generate_with_llm(text_only, check_module, prompt="a table", image_png=b"png")
    assert result.report.ok and len(result.attempts) == 1
    assert model.requests[0]["body"]["messages"][1]["content"] == "Make the 3D object of this prompt: a table"
    assert model.requests[0]["auth"] is None  # no key, no header


def never_called(source: bytes):
    raise AssertionError("the check must not run when the model gave no module")


@pytest.mark.parametrize("reply, match", [
    ((500, f'{{"error": "out of memory serving Bearer {KEY}"}}'),
     r"answered HTTP 500: .*out of memory serving Bearer \[key\]"),
    ((200, "<html>proxy login</html>"), "answered something other than a chat completion"),
    ((200, json.dumps({"choices": [{"message": {"content": "  "}}]})), "answered no text"),
    ((200, "x" * (4 * 2**20 + 10)), "answered more than 4,194,304 bytes: refused"),
])
def test_bad_answers_are_refused_with_the_cause_and_never_the_key(reply, match):
    with FakeModel([reply]) as model:
        with pytest.raises(LlmError, match=match) as caught:
            generate_with_llm(config(model.url), never_called, prompt="a cup")
    assert KEY not in str(caught.value)


def test_an_unreachable_model_is_named():
    with FakeModel([]) as model:
        url = model.url
    with pytest.raises(LlmError, match=r"the code model at http://127\.0\.0\.1:\d+/v1/chat/completions is unreachable"):
        generate_with_llm(config(url), never_called, prompt="a cup")


@pytest.mark.parametrize("fields, match", [
    ({"base_url": "file:///etc/passwd"}, "must be http"),
    ({"model": ""}, "name is empty"),
    ({"attempts": 0}, "at least 1"),
])
def test_bad_settings_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        LlmConfig(**{"base_url": "http://127.0.0.1:8000/v1", "model": "m", **fields})


def test_the_module_is_taken_from_the_answers_code_block():
    assert extract_module("intro\n```javascript\nA\n```\nmore\n```js\nlonger B\n```") == "longer B\n"
    bare = "export default function generate(THREE) {}"
    assert extract_module(bare) == bare + "\n"


def test_the_settings_build_the_config_and_never_show_the_key():
    from threegen_dagster.settings import Settings, SettingsError

    env = {"THREEGEN_COMP2_BACKEND": "llm", "THREEGEN_COMP2_LLM_URL": "http://10.0.0.5:8000/v1/",
           "THREEGEN_COMP2_LLM_MODEL": "qwen3-coder", "THREEGEN_COMP2_LLM_KEY": KEY, "THREEGEN_COMP2_LLM_ATTEMPTS": "5",
           "THREEGEN_COMP2_LLM_IMAGE": "0"}
    settings = Settings.from_env(env)
    assert settings.comp2_backend == "llm"
    assert settings.comp2_llm == LlmConfig("http://10.0.0.5:8000/v1", "qwen3-coder", KEY, attempts=5, send_image=False)
    assert KEY not in repr(settings) and KEY not in str(settings)
    assert Settings.from_env({}).comp2_llm is None and Settings.from_env({}).comp2_backend == "embedded"
    with pytest.raises(SettingsError, match="THREEGEN_COMP2_BACKEND=llm needs THREEGEN_COMP2_LLM_URL"):
        Settings.from_env({"THREEGEN_COMP2_BACKEND": "llm"})
    with pytest.raises(SettingsError, match="THREEGEN_COMP2_BACKEND='gpt': 'embedded' or 'llm'"):
        Settings.from_env({"THREEGEN_COMP2_BACKEND": "gpt"})
    with pytest.raises(SettingsError, match="THREEGEN_COMP2_LLM_\\*: the code model's name is empty"):
        Settings.from_env({"THREEGEN_COMP2_LLM_URL": "http://127.0.0.1:8000/v1"})


def _round_pipeline(root, monkeypatch, url: str | None, **more: str):
    """The project's definitions as THREEGEN_COMP2_* configure them (the key through the environment, as
    Dagster resolves an EnvVar), a registered prompt, and an instance with its partition."""
    import dagster as dg

    from threegen_dagster.definitions import build_definitions
    from threegen_dagster.defs.resources import StoreResource
    from threegen_dagster.keys import Prompt
    from threegen_dagster.settings import Settings

    env = {"THREEGEN_STORE": str(root / "store"), "THREEGEN_INBOX": str(root / "inbox"), "THREEGEN_GAUSSIANS": "5000"}
    if url:
        env |= {"THREEGEN_COMP2_BACKEND": "llm", "THREEGEN_COMP2_LLM_URL": url, "THREEGEN_COMP2_LLM_MODEL": "coder",
                "THREEGEN_COMP2_LLM_KEY": KEY, "THREEGEN_COMP2_LLM_ATTEMPTS": "2", **more}
        monkeypatch.setenv("THREEGEN_COMP2_LLM_KEY", KEY)
    settings = Settings.from_env(env)
    store = StoreResource.from_settings(settings)
    entry, _ = store.ledger().add(Prompt.from_text("a red mug"), 7, source="test")
    return build_definitions(settings), store, entry.key


def _comp2_run(definitions, instance, key, selection=None, config=None):
    import dagster as dg

    run_config = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}, **(config or {})}
    return definitions.resolve_job_def("sn17_comp2").execute_in_process(
        instance=instance, partition_key=key, run_config=run_config, raise_on_error=False,
        asset_selection=[dg.AssetKey(name) for name in selection] if selection else None)


def _metadata(result, asset="comp2_module") -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == asset]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@needs_node
def test_the_pipeline_writes_the_module_with_the_code_model_and_falls_back_when_it_fails(tmp_path, monkeypatch):
    import dagster as dg

    with FakeModel([BROKEN, VALID]) as model:
        definitions, store, key = _round_pipeline(tmp_path, monkeypatch, model.url)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("generations", [key])
            result = _comp2_run(definitions, instance, key)
            assert result.success
            assert store.artifacts().load(key, "comp2_module")[1] == extract_module(VALID).encode()
            meta = _metadata(result)
            assert meta["backend"] == "llm" and meta["model"] == "coder" and meta["attempts"] == 2
            assert "FORBIDDEN_THREE_API" in meta["failed_attempts"] and meta["passed"] is True
            first = model.requests[0]["body"]
            assert first["seed"] == 7 and first["messages"][1]["content"].endswith("a red mug")  # a text prompt: no image
            assert all(r["auth"] == f"Bearer {KEY}" for r in model.requests)
            assert KEY not in json.dumps(meta) and KEY not in str(result.dagster_run.run_config)

            # the model never passes: the embedded module from the mesh instead, and why
            model.replies[:] = [BROKEN, BROKEN]
            fallback = _comp2_run(definitions, instance, key, ["comp2_module"])
            assert fallback.success
            meta = _metadata(fallback)
            assert meta["backend"] == "embedded" and meta["faces"] > 1000 and meta["passed"] is True
            assert "failed the comp 2 check 2 time" in meta["fallback_reason"]
            assert b"generate(THREE)" in store.artifacts().load(key, "comp2_module")[1]

            # told not to fall back (THREEGEN_COMP2_LLM_FALLBACK=0), the run fails with the model's reason in one line
            model.replies[:] = [BROKEN, BROKEN]
            definitions, _, _ = _round_pipeline(tmp_path, monkeypatch, model.url, THREEGEN_COMP2_LLM_FALLBACK="0")
            strict = _comp2_run(definitions, instance, key, ["comp2_module"])
            assert not strict.success and model.replies == []
            (failure,) = [e for e in strict.all_events if e.event_type_value == "STEP_FAILURE"]
            assert "comp2_module: the code model's module failed the comp 2 check 2 time" in \
                failure.event_specific_data.error_display_string
