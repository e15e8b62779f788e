"""The store interface, run on a local folder and on the real S3 server alike."""

import errno
import hashlib
import threading
import traceback
import urllib.request

import pytest

from threegen_dagster.storage import Conflict, S3Store, StorageError, parse_s3_uri, redact_url

from .s3_server import ACCESS_KEY, BUCKET, SECRET_KEY


def test_write_read_stat_list_delete(store) -> None:
    store.write("a/b/one.bin", b"one")
    store.write("a/b/one.bin", b"uno")
    store.write("a/two.bin", b"two" * 10)
    store.write("other/three.bin", b"3")
    assert store.read("a/b/one.bin") == b"uno"
    assert store.stat("a/two.bin").size == 30 and store.stat("a/nope") is None
    assert [i.path for i in store.list("a")] == ["a/b/one.bin", "a/two.bin"]
    assert list(store.list("missing")) == []
    assert store.delete("a/two.bin") == 30 and store.delete("a/two.bin") == 0
    assert store.delete_prefix("a") == 3 and list(store.list("a")) == []
    assert store.read("other/three.bin") == b"3"


def test_a_missing_object_is_a_clear_error(store) -> None:
    with pytest.raises(StorageError, match="missing from the store: .*generations/k/nope.png") as info:
        store.read("generations/k/nope.png")
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize("path", ["../escape", "/abs", "a/../../b", "", "a\\b", "dir/"])
def test_paths_outside_the_store_are_refused(store, path: str) -> None:
    with pytest.raises(StorageError, match="not a store path"):
        store.write(path, b"x")


def test_create_only_and_compare_and_swap(store) -> None:
    tag = store.write("entry.json", b"v1", if_absent=True)
    with pytest.raises(Conflict, match=r"entry\.json(:? it)? exists"):  # local and S3 say it alike
        store.write("entry.json", b"v1 again", if_absent=True)
    data, read_tag = store.read_tagged("entry.json")
    assert data == b"v1" and read_tag == tag
    store.write("entry.json", b"v2", if_match=read_tag)
    with pytest.raises(Conflict, match=r"entry\.json(: it exists or)? changed since it was read"):  # the tag is stale now
        store.write("entry.json", b"v3", if_match=read_tag)
    assert store.read("entry.json") == b"v2"


def test_concurrent_updates_are_never_lost(store) -> None:
    """8 writers x 10 read-modify-writes of one JSON object: every increment survives."""
    def work(name: str) -> None:
        for _ in range(10):
            store.update_json("ledger/counter.json",
                              lambda cur: {**(cur or {}), "n": (cur or {}).get("n", 0) + 1, name: True})

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.update_json("ledger/counter.json", lambda cur: cur)
    assert final["n"] == 80 and sum(k.startswith("w") for k in final) == 8


def test_a_write_whose_bytes_do_not_match_their_hash_is_refused(store) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(StorageError, match="do not (hash to|match their SHA-256)"):
        store.write("blob", b"payload", sha256=wrong)
    assert not store.exists("blob")


def test_s3_multipart_uploads_carry_part_checksums(s3_server, s3_prefix) -> None:
    store = S3Store(s3_server.client(), BUCKET, s3_prefix, multipart_threshold=5 * 2**20)
    big = hashlib.sha256(b"seed").digest() * (12 * 2**20 // 32)  # 12 MiB: three parts
    store.write("big.bin", big)
    head = s3_server.client().head_object(Bucket=BUCKET, Key=f"{s3_prefix}/big.bin", ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(big) and head["ChecksumSHA256"].endswith("-3")
    assert store.read("big.bin") == big
    with pytest.raises(Conflict, match=r"big\.bin(:? it)? exists"):
        store.write("big.bin", big, if_absent=True)


def test_s3_presigned_links_download_the_object(s3_server, s3_prefix) -> None:
    store = S3Store(s3_server.client(), BUCKET, s3_prefix)
    store.write("x/model.spz", b"spz bytes")
    link = store.url("x/model.spz", 600, filename="chair.spz")
    with urllib.request.urlopen(link, timeout=5) as response:
        assert response.read() == b"spz bytes"
        assert 'filename="chair.spz"' in response.headers["Content-Disposition"]
    assert store.uri("x/model.spz") == f"s3://{BUCKET}/{s3_prefix}/x/model.spz"


def test_s3_wrong_credentials_are_a_clear_error_without_the_secret(s3_server, s3_prefix) -> None:
    store = S3Store(s3_server.client(secret="not-the-secret"), BUCKET, s3_prefix)
    with pytest.raises(StorageError, match="refused the credentials \\(SignatureDoesNotMatch\\)") as info:
        store.write("a", b"x")
    assert "not-the-secret" not in str(info.value) and info.value.errno == errno.EACCES


def test_s3_missing_bucket_and_unreachable_server(s3_server) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        S3Store(s3_server.client(), "no-such-bucket").write("a", b"x")
    import boto3
    from botocore.config import Config

    down = boto3.client("s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="k", aws_secret_access_key="s",
                        region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(StorageError, match="endpoint http://127.0.0.1:9 is unreachable") as info:
        S3Store(down, BUCKET).read("a")
    assert info.value.errno == errno.ECONNREFUSED


def test_s3_an_endpoint_url_with_credentials_never_shows_them(s3_server, s3_prefix) -> None:
    """``http://user:password@host:port``: botocore never sends the userinfo (requests are signed with the
    AWS keys), but it would reach every message naming the endpoint, the botocore error chained to it (what
    Dagster logs), and the download links put in asset metadata."""
    import boto3
    from botocore.config import Config

    password = "pw-in-the-url-4d1c"

    def client(endpoint: str, secret: str = SECRET_KEY):
        return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
                            region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1))

    def shown(error: BaseException) -> str:  # the message and the whole chain, as a log shows them
        return "".join(traceback.format_exception(error))

    up = s3_server.endpoint.replace("http://", f"http://user:{password}@")
    refused = S3Store(client(up, secret="not-the-secret"), BUCKET, s3_prefix)
    with pytest.raises(StorageError, match="refused the credentials") as info:
        refused.write("a", b"x")
    assert f"S3 at {s3_server.endpoint.replace('http://', 'http://***@')} refused" in str(info.value)
    assert password not in shown(info.value)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist at http://\\*\\*\\*@") as info:
        S3Store(client(up), "no-such-bucket").write("a", b"x")
    assert password not in shown(info.value)
    with pytest.raises(StorageError, match=r"endpoint http://\*\*\*@127.0.0.1:9 is unreachable") as info:
        S3Store(client(f"http://user:{password}@127.0.0.1:9"), BUCKET).read("a")
    assert password not in shown(info.value)

    store = S3Store(client(up), BUCKET, s3_prefix)
    store.write("x/model.spz", b"spz bytes")
    link = store.url("x/model.spz", 600)
    assert password not in link and "@" not in link.split("?")[0]
    with urllib.request.urlopen(link, timeout=5) as response:  # and it still downloads
        assert response.read() == b"spz bytes"


@pytest.mark.parametrize("text, shown", [
    ("http://user:pass@host:9000", "http://***@host:9000"),
    ("https://key@s3.example.com/bucket", "https://***@s3.example.com/bucket"),
    ('endpoint URL: "http://u:p@ss@10.0.0.1:9/b/k"', 'endpoint URL: "http://***@10.0.0.1:9/b/k"'),
    ("http://host:9000/a@b", "http://host:9000/a@b"), ("AWS S3", "AWS S3")])
def test_redact_url_hides_only_the_userinfo(text: str, shown: str) -> None:
    assert redact_url(text) == shown


@pytest.mark.parametrize("uri,expected", [("s3://b", ("b", "")), ("s3://b/p/q/", ("b", "p/q"))])
def test_parse_s3_uri(uri: str, expected) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri, why", [("s3://", "names no bucket"), ("s3:///prefix", "names no bucket"),
                                      ("/local/path", "not an s3:// URI")])
def test_parse_s3_uri_refuses(uri: str, why: str) -> None:
    with pytest.raises(StorageError, match=why):
        parse_s3_uri(uri)
