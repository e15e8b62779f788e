"""Publishing a round's outputs to the CDN on the real S3 server (its public-read bucket, as a CDN serves it):
each passed output uploaded as ``{stem}.js`` and read back by its public URL; what a validator would not get
(missing, other bytes, too many bytes, a redirect) is named per stem; an output that failed its check never
goes up."""

import hashlib
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from threegen_dagster.rounds.publish import Output, PublishError, check_cdn_url, upload, verify
from threegen_dagster.storage import open_store

from ..s3_server import PUBLIC_BUCKET

MODULE = b"export default function generate(THREE) { return new THREE.Group(); }\n"


@pytest.fixture
def cdn(s3_server, request, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    prefix = f"miner/{request.node.name}"
    store = open_store(f"s3://{PUBLIC_BUCKET}/{prefix}", endpoint_url=s3_server.endpoint)
    return store, s3_server.public_url(prefix)


def outputs(n: int) -> list[Output]:
    return [Output(f"{i:064x}", MODULE.replace(b"Group", b"Group" + b" " * i), True) for i in range(n)]


def test_published_and_read_back_by_url(cdn, s3_server):
    store, url = cdn
    items = [*outputs(3), Output("broken", b"export default 1", False, "EXPORT_INVALID")]
    publication = upload(store, items, number=53, competition=2, cdn_url=url + "/")
    verify(publication, timeout_s=5, tries=1)
    assert sorted(publication.verified) == sorted(o.stem for o in items[:3]) and publication.failures == {}
    assert publication.skipped == {"broken": "failed its rules check (EXPORT_INVALID): not published"}
    for item in items[:3]:
        assert publication.urls[item.stem] == f"{url}/{item.stem}.js"
        with urllib.request.urlopen(publication.urls[item.stem], timeout=5) as answer:  # unsigned, as a validator
            assert answer.read() == item.data and answer.headers["Content-Type"] == "text/javascript"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"{url}/broken.js", timeout=5)
    # the same outputs again: nothing uploaded again
    assert upload(store, items, number=53, competition=2, cdn_url=url).unchanged == 3


def test_what_a_validator_would_not_get_is_named(cdn, s3_server):
    store, url = cdn
    items = outputs(4)
    publication = upload(store, items, number=53, competition=2, cdn_url=url)
    store.write(f"{items[0].stem}.js", items[0].data.replace(b"Group", b"Mesh "))  # same size, other bytes
    store.write(f"{items[1].stem}.js", items[1].data + b"// more")  # longer than uploaded
    s3_server.client().delete_object(Bucket=PUBLIC_BUCKET, Key=f"miner/{_name(url)}/{items[2].stem}.js")
    verify(publication, timeout_s=5, tries=1)
    assert publication.verified == [items[3].stem]
    failures = publication.failures
    assert "with sha256" in failures[items[0].stem] and f"not the {len(items[0].data)} uploaded" in failures[items[0].stem]
    # refused by its Content-Length, before the body is read
    assert failures[items[1].stem].endswith(f": {len(items[1].data) + 7} bytes; the limit is {len(items[1].data)}")
    assert failures[items[2].stem].endswith("not found (HTTP 404)")


def _name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:9/elsewhere.js")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_not_followed(tmp_path):
    """Validators do not follow redirects: a CDN that answers 302 has not published the file."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        folder = open_store(str(tmp_path / "cdn"))
        publication = upload(folder, outputs(1), number=53, competition=2,
                             cdn_url=f"http://127.0.0.1:{server.server_address[1]}/r53")
        verify(publication, timeout_s=5, tries=1)
    finally:
        server.shutdown()
        server.server_close()
    (failure,) = publication.failures.values()
    assert failure.endswith("HTTP 302 Found") and publication.verified == []
    assert (tmp_path / "cdn" / f"{outputs(1)[0].stem}.js").read_bytes() == MODULE


def test_bad_items_and_settings_are_refused(tmp_path):
    folder = open_store(str(tmp_path / "cdn"))
    big = Output("big", b"x" * (1_048_576 + 1), True)
    odd = Output("../escape", MODULE, True)
    publication = upload(folder, [big, odd, *outputs(1)], number=53, competition=2, cdn_url="https://cdn.example.org/r")
    assert publication.failures["big"] == "1,048,577 bytes; validators fetch at most 1,048,576"
    assert "not a plain stem" in publication.failures["../escape"]
    assert list(publication.urls) == [outputs(1)[0].stem] and not (tmp_path / "escape.js").exists()
    assert hashlib.sha256(MODULE).hexdigest() == publication.sha256[outputs(1)[0].stem]
    for bad in ("ftp://cdn.example.org/r", "https://cdn.example.org/r?x=1", "cdn.example.org/r"):
        with pytest.raises(PublishError, match="is not a public base URL"):
            check_cdn_url(bad)


def test_the_publish_sensor_waits_for_every_run_of_the_round():
    import dagster as dg

    from threegen_dagster.defs.rounds_publish import sn17_round_publish_sensor

    stand_in = dg.GraphDefinition("stand_in", node_defs=[dg.op(name="noop")(lambda: None)]).to_job()
    with dg.instance_for_test() as instance:
        def tick():
            with dg.build_sensor_context(instance=instance) as context:
                return sn17_round_publish_sensor(context)

        assert tick().skip_message == "no round taken up yet"
        instance.add_dynamic_partitions("sn17_rounds", ["52", "53"])
        assert tick().skip_message == "round 53: no runs yet"
        runs = [instance.create_run_for_job(stand_in, tags={"threegen/round": "53"}) for _ in range(3)]
        instance.create_run_for_job(stand_in, tags={"threegen/round": "52"})  # an older round's run: not waited for
        instance.report_run_failed(runs[0])
        assert tick().skip_message == "round 53: 2 of 3 runs not ended yet"
        for run in runs[1:]:
            instance.report_run_failed(run)
        request = tick()
        assert request.partition_key == "53" and request.run_key.startswith("publish:53:3:")


def test_the_cdn_settings(tmp_path):
    from threegen_dagster.settings import Settings, SettingsError

    settings = Settings.from_env({"THREEGEN_CDN_PREFIX": "s3://my-bucket/sn17/", "THREEGEN_CDN_URL": "https://cdn.example.org/sn17/",
                                  "THREEGEN_SN17_REPO": "me/miner", "THREEGEN_REVEAL_BLOCKS": "30"}, cwd=tmp_path)
    assert (settings.cdn_prefix, settings.cdn_url) == ("s3://my-bucket/sn17", "https://cdn.example.org/sn17")
    assert settings.commitment == {"repo": "me/miner", "commit": "", "reveal_blocks": 30, "network": "finney"}
    assert Settings.from_env({"THREEGEN_CDN_PREFIX": "cdn"}, cwd=tmp_path).cdn_prefix == str(tmp_path / "cdn")
    assert Settings.from_env({}, cwd=tmp_path).cdn_prefix == ""  # unset: publishing refuses, saying what to set
    with pytest.raises(SettingsError, match="THREEGEN_CDN_PREFIX: .*names no bucket"):
        Settings.from_env({"THREEGEN_CDN_PREFIX": "s3:///sn17"}, cwd=tmp_path)
    with pytest.raises(SettingsError, match="THREEGEN_REVEAL_BLOCKS='0' must be greater than 0"):
        Settings.from_env({"THREEGEN_REVEAL_BLOCKS": "0"}, cwd=tmp_path)


def test_publishing_without_a_cdn_says_what_to_set(tmp_path):
    import dagster as dg

    from threegen_dagster.definitions import build_definitions
    from threegen_dagster.settings import Settings

    definitions = build_definitions(Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox"))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sn17_rounds", ["53"])
        result = definitions.resolve_job_def("sn17_round_publish").execute_in_process(
            instance=instance, partition_key="53", raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("round_publication")
    assert "no CDN configured: set THREEGEN_CDN_PREFIX (s3://BUCKET/PREFIX) and THREEGEN_CDN_URL" in failure.error.message
