"""The miner's client and task puller against LocalValidators on loopback: bittensor's real Dendrite and
Axon, records in a LocalStore. Needs the ``sn17`` extra (bittensor); skipped without it."""

import asyncio
import base64
import gc
import io
import threading
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

bt = pytest.importorskip("bittensor")

from bittensor.utils import networking

from threegen_dagster.sn17.client import MinerClient, PulledTask, prompt_of, validation_threshold
from threegen_dagster.sn17.decision import VALIDATION_THRESHOLD, Candidate, decide
from threegen_dagster.sn17.protocol import Task
from threegen_dagster.sn17.queue import REJECTED_CHARS, TASK_DEADLINE_S
from threegen_dagster.sn17.puller import (
    TaskQueue,
    neurons_from_metagraph,
    next_pull_in,
    pull_once,
    run_forever,
    task_of,
    validator_of,
)
from threegen_dagster.sn17.validators import Neuron, ValidatorBook, ValidatorPolicy
from threegen_dagster.storage import LocalStore
from threegen_dagster.tasks import TaskError

from ..raw_host import RawHost
from .local_validator import HOST, LocalValidator, MinerState, make_wallet


RESULT = base64.b64encode(b"\x28\xb5\x2f\xfd stand-in SPZ bytes").decode()


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()  # a real (tiny) PNG: image prompts must decode
POLICY = ValidatorPolicy(min_stake=0.0, manual_blacklist=frozenset())


@pytest.fixture
def start(tmp_path):
    """start(**options) -> a running LocalValidator (stopped after the test) and its Neuron."""
    running = []

    def start(**options):
        uid = len(running)
        v = LocalValidator(tmp_path / f"validator{uid}", **options).start()
        running.append(v)
        return v, Neuron(uid, v.hotkey, 1000.0 + uid, HOST, v.axon.port)

    yield start
    for v in running:
        v.stop()


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture
def client(tmp_path, store, monkeypatch):
    """client(**options) -> a MinerClient; its Dendrite made here, outside any event loop."""
    # Dendrite() asks the network for the external IP; on loopback it is the axons' own
    monkeypatch.setattr(networking, "get_external_ip", lambda: "127.0.0.1")
    wallet = make_wallet(tmp_path, "miner")

    def make(policy=POLICY, **options):
        return MinerClient(wallet, ValidatorBook(store), policy, dendrite=bt.Dendrite(wallet=wallet), **options)

    yield make
    gc.collect()  # drop the Dendrites here: Dendrite.__del__ warns inside an event loop (a later test's)


def run(client, scenario):
    async def main():
        async with client:
            return await scenario(client)

    return asyncio.run(main())


def test_pulls_concurrently_and_queues_each_task_once(start, client, store):
    # each validator holds its answer until the other's request has arrived too (or 10 s pass alone):
    # both meet only if the two requests are in flight at the same time
    meeting = threading.Barrier(2, timeout=10)
    (v1, n1), (v2, n2) = start(rendezvous=meeting), start(rendezvous=meeting)
    t1, t2 = v1.add_task("a wooden chair"), v2.add_task("a red teapot")
    c, queue = client(), TaskQueue(store)

    async def scenario(c):
        first = await c.pull([n1, n2])
        v1.rendezvous = v2.rendezvous = None
        return first, await c.pull([n1, n2])

    first, again = run(c, scenario)
    assert v1.met == v2.met == [True]  # asked at once, not one after the other
    assert {(p.validator_uid, p.task.id) for p in first} == {(0, t1.id), (1, t2.id)}
    assert all(p.validation_threshold == 0.6 for p in first)
    assert [queue.add(p) for p in first] == [True, True]
    assert sorted(p.task.id for p in again) == sorted([t1.id, t2.id])  # the same tasks again before submitting
    assert [queue.add(p) for p in again] == [False, False]
    pending = queue.pending()
    assert {e["task_id"] for e in pending} == {t1.id, t2.id} and len(queue.all()) == 2
    assert {e["prompt"] for e in pending} == {"a wooden chair", "a red teapot"}
    record = c.book.record(v1.hotkey)
    assert (record.uid, record.pulls, record.tasks, record.failures) == (0, 2, 2, 0)
    assert all(ok for _, _, ok in record.calls)


def test_text_task_end_to_end_then_its_cooldown_skips_the_validator(start, client, store):
    v, n = start()
    queued = v.add_task("  a wooden\nchair ")
    c, queue = client(), TaskQueue(store)

    async def scenario(c):
        (pulled,) = await c.pull([n])
        assert queue.add(pulled)
        entry = queue.set_state(pulled.task.id, "running")
        assert prompt_of(task_of(entry)).text == "a wooden chair"
        before = time.time()
        outcome = await c.submit(validator_of(entry), task_of(entry), RESULT)
        queue.set_state(pulled.task.id, "submitted", accepted=outcome.accepted)
        return before, outcome, await c.pull([n])

    before, outcome, again = run(c, scenario)
    got = v.received[-1]
    assert got.signature_ok and got.outcome == "accepted" and got.task_id == queued.id and got.results == RESULT
    assert outcome.accepted and not outcome.error and outcome.feedback["task_fidelity_score"] == 1.0
    assert int(before) + 300 <= outcome.cooldown_until <= time.time() + 301
    record = c.book.record(v.hotkey)
    assert (record.submissions, record.accepted, record.rejected, record.empty) == (1, 1, 0, 0)
    assert record.scores == [1.0] and record.feedback[-1]["generations_within_the_window"] == 1
    assert record.cooldown_until == outcome.cooldown_until
    assert queue.get(queued.id)["state"] == "submitted" and queue.pending() == []
    assert again == [] and "cooldown" in c.last_skipped[n.uid]
    assert [name for name, _ in v.requests] == ["PullTask", "SubmitResults"]  # not asked during its cooldown


def test_empty_result_counts_as_empty_without_penalty(start, client):
    v, n = start()
    v.add_task("something too hard")
    c = client()

    async def scenario(c):
        (pulled,) = await c.pull([n])
        return time.time(), await c.submit(n, pulled.task, "")

    before, outcome = run(c, scenario)
    assert v.received[-1].outcome == "empty" and v.received[-1].signature_ok
    assert not outcome.accepted and not outcome.error
    assert int(before) + 300 <= outcome.cooldown_until <= time.time() + 301  # the task's cooldown only
    record = c.book.record(v.hotkey)
    assert (record.submissions, record.accepted, record.rejected, record.empty) == (1, 0, 0, 1)
    assert record.scores == [] and record.failures == 0


def test_low_score_is_rejected_with_the_penalty(start, client):
    v, n = start(score=lambda task, results: 0.42)
    v.add_task("a blurry blob")
    c = client()

    async def scenario(c):
        (pulled,) = await c.pull([n])
        return time.time(), await c.submit(n, pulled.task, RESULT)

    before, outcome = run(c, scenario)
    assert v.received[-1].outcome == "rejected_score"
    assert not outcome.accepted and outcome.feedback["task_fidelity_score"] == 0.0
    assert outcome.cooldown_until >= int(before) + 900
    record = c.book.record(v.hotkey)
    assert (record.submissions, record.accepted, record.rejected) == (1, 0, 1) and record.scores == [0.0]


def test_timeouts_cool_down_then_blacklist_automatically(start, client):
    slow, n = start(delay=1.0)
    slow.add_task("never answered in time")
    policy = ValidatorPolicy(min_stake=0.0, manual_blacklist=frozenset(), min_calls=2, window=5,
                             failure_cooldown_s=60.0)
    c = client(policy, pull_timeout=0.3)
    t0 = time.time()

    async def scenario(c):
        rounds = []
        for now in (t0, t0 + 1, t0 + 61, t0 + 122):
            rounds.append((await c.pull([n], now=now), dict(c.last_skipped), dict(c.last_errors)))
        return rounds

    (r1, r2, r3, r4) = run(c, scenario)
    assert r1[0] == [] and r1[2][n.uid].startswith("408 Request timeout")
    assert "our cooldown after a failure" in r2[1][n.uid]
    assert r3[0] == [] and n.uid in r3[2]
    assert r4[1][n.uid].startswith("blacklisted automatically: success 0%")
    record = c.book.record(slow.hotkey)
    assert (record.pulls, record.failures) == (2, 2)
    assert record.local_cooldown_until == t0 + 61 + 60
    assert [ok for _, _, ok in record.calls] == [False, False]  # timed out: failures, not answers


def test_submit_to_an_unreachable_validator_records_the_failure(client, store):
    dead = Neuron(7, "5Dead", 1.0, HOST, 9)  # nothing listens on port 9
    c = client()
    before = time.time()
    outcome = run(c, lambda c: c.submit(dead, Task(prompt="x"), RESULT))
    assert outcome.error.startswith("503 Service unavailable at") and not outcome.accepted and outcome.feedback is None
    assert not outcome.sent  # refused: provably never left, so sending again cannot double it
    record = c.book.record("5Dead")
    assert (record.uid, record.failures, record.submissions) == (7, 1, 0)
    assert outcome.cooldown_until == record.local_cooldown_until >= before + POLICY.failure_cooldown_s


def test_manual_blacklist_is_never_asked(start, client):
    (v1, n1), (v2, n2) = start(), start()
    v1.add_task("a lamp")
    v2.add_task("a forbidden lamp")
    c = client()
    c.book.set_blacklisted(n2.uid, True)
    pulled = run(c, lambda c: c.pull([n1, n2]))
    assert [p.validator_uid for p in pulled] == [n1.uid]
    assert c.last_skipped == {n2.uid: "blacklisted by hand"}
    assert v2.requests == [] and len(v1.requests) == 1


def test_malformed_tasks_are_rejected_and_handed_back(start, client, store):
    (v1, n1), (v2, n2), (v3, n3) = start(), start(), start()
    bad_image = v1.add_task("not base64 at all!", type="image")
    empty = v2.add_task("   ")
    bad_id = v3.add_task("a fine prompt", id="../../etc/passwd")
    c, queue = client(), TaskQueue(store)

    summary = run(c, lambda c: pull_once(c, [n1, n2, n3], queue))
    assert (summary["pulled"], summary["new"], summary["rejected"], summary["duplicates"]) == (3, 3, 3, 0)
    assert queue.pending() == []
    reasons = {e["task_id"]: e["reason"] for e in queue.all()}
    assert all(e["state"] == "rejected" and e["released"] for e in queue.all())
    assert "not valid base64" in reasons[bad_image.id] and bad_image.id in reasons[bad_image.id]
    assert "empty" in reasons[empty.id]
    assert "not a usable task id" in reasons[bad_id.id]
    assert queue.get(bad_id.id)["prompt"] == "a fine prompt"  # stored under a hashed name
    for v in (v1, v2, v3):  # handed back with an empty result: no penalty, the validator moves on
        assert v.received[-1].outcome == "empty" and v.received[-1].signature_ok
    with pytest.raises(TaskError, match=bad_image.id):
        prompt_of(bad_image)


def test_image_task_becomes_a_prompt(start, client, store):
    v, n = start()
    image_b64 = base64.b64encode(PNG).decode()
    queued = v.add_task(image_b64, type="image")
    c, queue = client(), TaskQueue(store)

    (pulled,) = run(c, lambda c: c.pull([n]))
    assert pulled.task == queued
    prompt = prompt_of(pulled.task)
    assert prompt.kind == "image" and prompt.image == PNG
    assert queue.add(pulled)
    entry = queue.get(queued.id)
    assert (entry["state"], entry["type"], entry["prompt"]) == ("pulled", "image", image_b64)


def test_run_forever_pulls_until_stopped(start, client, store):
    v, n = start()
    queued = v.add_task("a chair")
    c, queue = client(), TaskQueue(store)
    rounds = []

    async def main():
        stop = asyncio.Event()
        await run_forever(c, lambda: [n], queue, interval=30.0, stop=stop,
                          on_round=lambda summary: (rounds.append(summary), stop.set()))

    asyncio.run(main())
    assert rounds[0]["new"] == 1 and queue.get(queued.id)["state"] == "pulled"


def test_next_pull_waits_for_the_soonest_cooldown(client):
    c = client()
    n = Neuron(1, "5Validator", 1.0, HOST, 1)
    assert next_pull_in(c, [n], 30.0, now=1000.0) == 30.0
    c.book.update(n.hotkey, lambda r: setattr(r, "cooldown_until", 1010.0))
    assert next_pull_in(c, [n], 30.0, now=1000.0) == 11.0
    assert next_pull_in(c, [n], 5.0, now=1000.0) == 5.0


def test_neurons_from_metagraph():
    metagraph = SimpleNamespace(
        uids=np.array([0, 1]), hotkeys=["5A", "5B"], S=np.array([12.5, 3000.0], dtype=np.float32),
        validator_permit=np.array([False, True]),
        axons=[SimpleNamespace(ip="0.0.0.0", port=0), SimpleNamespace(ip="1.2.3.4", port=8091)])
    assert neurons_from_metagraph(metagraph) == [Neuron(0, "5A", 12.5, "0.0.0.0", 0, False),
                                                 Neuron(1, "5B", 3000.0, "1.2.3.4", 8091, True)]


def test_a_validator_s_impossible_cooldown_is_its_own_problem(start, client, store):
    """A validator answering a cooldown of 400 digits (a valid JSON int no float holds) used to raise
    OverflowError in the shared pull round: the honest validator's task, already assigned, was never
    queued. Now the cooldown is taken as at most a week ahead, and each validator's failure is its own."""
    from threegen_dagster.sn17.client import MAX_COOLDOWN_S, cooldown

    (hostile, h), (honest, n) = start(), start()
    honest.add_task("a red teapot")
    c, queue = client(), TaskQueue(store)
    hostile.miners[c.dendrite.keypair.ss58_address] = MinerState(cooldown_until=10**400)
    before = time.time()
    pulled = run(c, lambda c: c.pull([h, n]))
    assert [p.task.prompt for p in pulled] == ["a red teapot"] and queue.add(pulled[0])
    assert before < c.book.record(hostile.hotkey).cooldown_until <= time.time() + MAX_COOLDOWN_S
    assert cooldown(float("nan"), 5.0) == 0.0 and cooldown(-1, 5.0) == 0.0 and cooldown("soon", 5.0) == 0.0


def raw_validator(answer: str) -> RawHost:
    """A validator that is no bittensor Axon: it answers every call with the JSON ``answer`` (the Axon will not
    write NaN or Infinity; a hostile validator need not use it). Stopped by ``close()``."""
    body = answer.encode()
    return RawHost(lambda conn: conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nbt_header_axon_status_code: 200\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body))


def test_an_unusable_validation_threshold_gives_way_to_the_default(start, client, store, caplog):
    """A validator answering ``validation_threshold`` NaN made every result of its tasks empty: no score is
    >= NaN (and ``max(NaN, ours)`` is NaN). Infinity or 5 did the same; -1 meant nothing. Each is refused at
    the pull with one logged line, and the project's default is queued instead; a fair one is kept."""
    fair, low, high = start(threshold=0.75), start(threshold=-1.0), start(threshold=5.0)
    hosts = {raw: raw_validator('{"task": {"type": "text", "id": "raw-%s", "prompt": "a red teapot"}, '
                                '"validation_threshold": %s, "cooldown_until": 0}' % (raw.lower(), raw))
             for raw in ("NaN", "Infinity")}
    raw_neurons = [Neuron(10 + i, f"5Raw{raw}", 1000.0, HOST, int(h.url.rsplit(":", 1)[1]))
                   for i, (raw, h) in enumerate(hosts.items())]
    for v, _ in (fair, low, high):
        v.add_task("a wooden chair")
    c, queue = client(), TaskQueue(store)
    try:
        summary = run(c, lambda c: pull_once(c, [fair[1], low[1], high[1], *raw_neurons], queue))
    finally:
        for h in hosts.values():
            h.close()
    assert (summary["new"], summary["failed"]) == (5, {})
    thresholds = {e["validator_uid"]: e["validation_threshold"] for e in queue.all()}
    assert thresholds == {0: 0.75, 1: VALIDATION_THRESHOLD, 2: VALIDATION_THRESHOLD,
                          10: VALIDATION_THRESHOLD, 11: VALIDATION_THRESHOLD}
    assert all(decide([Candidate("k", 0.9)], t).submit for t in thresholds.values())  # a good result goes
    refused = sorted(r.getMessage() for r in caplog.records if "validation_threshold" in r.getMessage())
    assert refused == sorted(f"sn17: validator {uid}: validation_threshold {shown} is not a number in [0, 1]; "
                             f"using the default {VALIDATION_THRESHOLD} instead"
                             for uid, shown in ((1, "-1.0"), (2, "5.0"), (10, "nan"), (11, "inf")))
    for value in ("0.7", True, None, 10**400, float("-inf")):  # what no Axon sends, refused all the same
        assert validation_threshold(value)[0] == VALIDATION_THRESHOLD and validation_threshold(value)[1]
    assert validation_threshold(0) == (0.0, "") and validation_threshold(1) == (1.0, "")


def test_an_over_long_prompt_or_id_is_rejected_with_a_bounded_record(start, client, store):
    """A rejected task's record kept its whole prompt and id (a reviewer stored 30 MB, read back on every
    re-pull and by the catalog). Now it keeps a prefix and the full length; the hand-back still signs the
    whole prompt it was sent, so the validator takes it without a penalty."""
    (v1, n1), (v2, n2) = start(), start()
    long_prompt, long_id = "a very long chair " * 200_000, "x" * 1_000_000  # 3.6 MB, 1 MB
    t1, t2 = v1.add_task(long_prompt), v2.add_task("a chair with a long name", id=long_id)
    c, queue = client(), TaskQueue(store)
    summary = run(c, lambda c: pull_once(c, [n1, n2], queue))
    assert (summary["new"], summary["rejected"]) == (2, 2)
    first, second = queue.get(t1.id), queue.get(long_id)
    assert first["state"] == second["state"] == "rejected" and first["released"] and second["released"]
    assert (first["prompt"], first["prompt_chars"]) == (long_prompt[:REJECTED_CHARS], len(long_prompt))
    assert f"the prompt has {len(long_prompt):,} characters; the limit is 10,000" in first["reason"]
    assert (second["task_id"], second["task_id_chars"]) == (long_id[:REJECTED_CHARS], len(long_id))
    for task_id in (t1.id, long_id):
        assert store.path(TaskQueue.path(task_id)).stat().st_size < 2000
    for v, task in ((v1, t1), (v2, t2)):
        assert [(s.task_id, s.outcome, s.signature_ok) for s in v.received] == [(task.id, "empty", True)]


def test_refusing_an_over_long_prompt_costs_next_to_no_memory(store):
    """Queueing a task whose prompt is far over the limit cleaned (split into words) or decoded it first:
    hundreds of MB for a 30 MB prompt. Its length alone refuses it now."""
    for task in (Task(type="text", prompt="ab " * 1_000_000), Task(type="image", prompt="A" * 30_000_000)):
        pulled = PulledTask(0, "5Validator", task, 0.6, time.time(), HOST, 1)
        tracemalloc.start()
        try:
            assert TaskQueue(store).add(pulled)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, (task.type, peak)
        assert TaskQueue(store).get(task.id)["state"] == "rejected"


def test_a_flooding_validator_is_capped_until_its_tasks_drain(start, client, store, caplog):
    """A validator answering ``cooldown_until=0`` with a new task on every pull filled the queue without end
    (and the GPUs after it). Now it is not asked while ``max_pending`` of its tasks are unfinished, said once
    in the log; its tasks not started by their deadline expire (never run), and then it is asked again."""
    v, n = start(reassign=True)
    tasks = [v.add_task(f"flood number {i}") for i in range(5)]
    c, queue, t0 = client(), TaskQueue(store), time.time()
    assert POLICY.max_pending == 2

    async def scenario(c):
        rounds = [await pull_once(c, [n], queue, now=t0 + i) for i in range(4)]
        return rounds + [await pull_once(c, [n], queue, now=t0 + TASK_DEADLINE_S + 10)]

    rounds = run(c, scenario)
    assert [r["new"] for r in rounds] == [1, 1, 0, 0, 1]
    assert rounds[2]["skipped"][n.uid] == "2 of its tasks not finished (at most 2): not asked until they drain"
    assert [name for name, _ in v.requests] == ["PullTask"] * 3  # not asked while at its cap
    capped = [r.getMessage() for r in caplog.records if "not asked until they drain" in r.getMessage()]
    assert capped == [f"sn17: validator {n.uid}: {rounds[2]['skipped'][n.uid]}"]  # once, not every round
    assert rounds[4]["expired"] == 2
    states = {e["task_id"]: e for e in queue.all()}
    for task in tasks[:2]:
        assert states[task.id]["state"] == "expired" and "never run or submitted" in states[task.id]["reason"]
    assert states[tasks[2].id]["state"] == "pulled" and [e["task_id"] for e in queue.active()] == [tasks[2].id]


def test_a_task_sent_again_is_never_run_twice_nor_lost(start, client, store):
    """SN17.md: a re-pull before submitting returns the same task, so a task in flight sent again is the
    validator waiting for our result: not run twice, nothing sent. A task we are done with (submitted,
    expired) sent again is still assigned to us there, and the validator would send it forever: it was
    counted as a duplicate and never answered, and no other task came from that validator. Now it is handed
    back with an empty result (no penalty), never run again, and its record says so."""
    v, n = start(task_cooldown=0)
    first = v.add_task("a wooden chair")
    c, queue = client(), TaskQueue(store)

    async def scenario(c):
        rounds = [await pull_once(c, [n], queue), await pull_once(c, [n], queue)]
        entry = queue.set_state(first.id, "running")  # ... generated, then submitted as the submit job does
        assert (await c.submit(n, task_of(entry), RESULT)).accepted
        queue.set_state(first.id, "submitted")
        v.miners[c.hotkey] = MinerState(assigned=first)  # the validator restarted from an older state
        rounds.append(await pull_once(c, [n], queue))
        second = v.add_task("a red mug")
        rounds.append(await pull_once(c, [n], queue))
        # not started by its deadline: expired at the next round, which the validator answers with it again
        rounds.append(await pull_once(c, [n], queue, now=time.time() + TASK_DEADLINE_S + 1))
        return second, rounds

    second, rounds = run(c, scenario)
    assert [(r["new"], r["duplicates"], r["replayed"]) for r in rounds] == [
        (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 0, 1)]
    assert [(s.task_id, s.outcome) for s in v.received] == [
        (first.id, "accepted"), (first.id, "empty"), (second.id, "empty")]
    for task, state in ((first, "submitted"), (second, "expired")):
        entry = queue.get(task.id)
        assert (entry["state"], entry["replays"], entry["released"]) == (state, 1, True)
    assert queue.active() == []  # neither runs again


def test_another_validators_task_under_an_id_we_hold_is_handed_back(start, client, store):
    """Two validators sending one task id: the first queued runs; the other, which cannot be queued under
    the same id, is handed back to its own validator (empty) instead of staying assigned to us for ever."""
    (v1, n1), (v2, n2) = start(), start()
    v1.add_task("a wooden chair", id="same-id")
    v2.add_task("a red mug", id="same-id")
    c, queue = client(), TaskQueue(store)
    summary = run(c, lambda c: pull_once(c, [n1, n2], queue))
    assert (summary["new"], summary["replayed"]) == (1, 1)
    entry = queue.get("same-id")  # v2 first: more stake
    assert (entry["validator_uid"], entry["prompt"], entry["state"]) == (n2.uid, "a red mug", "pulled")
    assert [(s.task_id, s.outcome) for s in v1.received] == [("same-id", "empty")] and v2.received == []
