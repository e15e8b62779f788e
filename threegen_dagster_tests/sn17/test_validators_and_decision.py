"""Validator selection, records, blacklists and the submit-or-empty decision (pure logic)."""

import threading

import pytest

from threegen_dagster.sn17.decision import Candidate, decide
from threegen_dagster.sn17.validators import (
    Neuron,
    ValidatorBook,
    ValidatorPolicy,
    ValidatorRecord,
    auto_blacklist_reason,
    select,
)
from threegen_dagster.storage import LocalStore

NOW = 1_800_000_000.0
POLICY = ValidatorPolicy(min_stake=1000, manual_blacklist=frozenset({180}), window=10, min_calls=5)


def neuron(uid: int, stake: float = 5000, ip: str = "10.0.0.1", port: int = 8091, permit: bool = True) -> Neuron:
    return Neuron(uid, f"hk{uid}", stake, ip, port, permit)


def record(hotkey: str, calls: list[tuple[float, bool]], **kw) -> ValidatorRecord:
    r = ValidatorRecord(hotkey, **kw)
    for seconds, ok in calls:
        r.call(NOW - 100, seconds, ok)
    return r


def test_selection_explains_every_skip() -> None:
    neurons = [neuron(1, stake=9000), neuron(2), neuron(180), neuron(3, stake=10), neuron(4, port=0),
               neuron(5, permit=False), neuron(6), neuron(7), neuron(8), neuron(9)]
    records = {
        "hk6": record("hk6", [(1.0, False)] * 4 + [(1.0, True)]),  # 20% success: auto-blacklisted
        "hk7": record("hk7", [(150.0, True)] * 5),  # slow: auto-blacklisted
        "hk8": ValidatorRecord("hk8", cooldown_until=NOW + 60),
        "hk9": ValidatorRecord("hk9", local_cooldown_until=NOW + 30),
        "hk2": record("hk2", [(1.0, False)] * 4),  # too few calls to judge
    }
    chosen, skipped = select(neurons, records, POLICY, {180}, NOW)
    assert [n.uid for n in chosen] == [1, 2]  # most stake first
    assert skipped[180] == "blacklisted by hand" and skipped[3] == "stake 10 < 1,000"
    assert skipped[4] == "not serving an axon" and skipped[5] == "no validator permit"
    assert skipped[6].startswith("blacklisted automatically: success 20% < 30%")
    assert skipped[7].startswith("blacklisted automatically: mean response 150 s > 120 s")
    assert skipped[8] == "its cooldown runs 60 s more"
    assert skipped[9] == "our cooldown after a failure runs 30 s more"


def test_recovery_lifts_the_automatic_blacklist() -> None:
    r = record("hk", [(1.0, False)] * 10)
    assert auto_blacklist_reason(r, POLICY)
    for _ in range(8):
        r.call(NOW, 1.0, True)
    assert auto_blacklist_reason(r, POLICY) == ""  # 80% over the last 10


def test_book_persists_records_and_the_manual_blacklist(tmp_path) -> None:
    book = ValidatorBook(LocalStore(tmp_path))
    assert book.blacklist(POLICY) == {180}
    book.set_blacklisted(42, True)
    book.set_blacklisted(180, False)  # taken off the configured list by hand
    assert book.blacklist(POLICY) == {42}
    book.set_blacklisted(180, True)
    assert ValidatorBook(LocalStore(tmp_path)).blacklist(POLICY) == {42, 180}

    def pull(n: int) -> None:
        for _ in range(5):
            book.update("hkA", lambda r: (setattr(r, "pulls", r.pulls + 1), r.call(NOW, 0.5, True)))

    threads = [threading.Thread(target=pull, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = book.record("hkA")
    assert stored.pulls == 20 and len(stored.calls) == 20  # no update lost
    assert set(book.all()) == {"hkA"} and book.record("unknown").pulls == 0


@pytest.mark.parametrize("candidates,submit,key,reason", [
    ([Candidate("a", 0.7), Candidate("b", 0.9), Candidate("c", 0.5)], True, "b", "submit b: score 0.900 >= 0.6 (best of 3)"),
    ([Candidate("a", 0.59)], False, None, "empty result: best score 0.590 < 0.6"),
    ([Candidate("a", 0.95, checks_passed=False), Candidate("b", 0.61)], True, "b", "submit b"),
    ([Candidate("a", None)], False, None, "no candidate was scored"),
    ([Candidate("a", 0.9, checks_passed=False)], False, None, "failed the validator's checks"),
    ([], False, None, "no candidate was scored"),
    ([Candidate("a", 0.6)], True, "a", "0.600 >= 0.6"),
])
def test_decision(candidates, submit, key, reason) -> None:
    decision = decide(candidates, threshold=0.6)
    assert decision.submit is submit and decision.key == key and reason in decision.reason


def test_validator_records_in_the_cli_and_the_ui(tmp_path, monkeypatch, capsys) -> None:
    import json

    import dagster as dg

    from threegen_dagster import cli
    from threegen_dagster.definitions import build_definitions
    from threegen_dagster.settings import Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREEGEN_SN17_BLACKLIST", "180,7")
    settings = Settings.from_env()
    book = ValidatorBook(LocalStore(settings.store))
    book.update("hkA", lambda r: (setattr(r, "uid", 3), setattr(r, "pulls", 4), r.call(NOW, 2.0, True)))
    book.update("hkB", lambda r: (setattr(r, "uid", 9), [r.call(NOW, 1.0, False) for _ in range(6)]))

    assert cli.main(["validators", "--unblacklist", "7"]) == 0
    assert "validator 7 no longer blacklisted" in capsys.readouterr().out
    assert cli.main(["validators", "--blacklist", "3", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["blacklist"] == [3, 180]
    rows = {r["uid"]: r for r in listing["validators"]}
    assert rows[3]["blacklisted"] == "by hand" and rows[3]["pulls"] == 4 and rows[3]["mean_response_s"] == 2.0
    assert rows[9]["blacklisted"].startswith("auto: success 0%") and rows[9]["failures"] == 6

    with dg.instance_for_test() as instance:
        result = build_definitions(settings).resolve_job_def("refresh_catalog").execute_in_process(
            instance=instance, run_config=cli.QUIET_RUN)
    frame = result.output_for_node("validator_records")
    assert sorted(frame["uid"]) == [3, 9] and set(frame["blacklisted"].str[:4]) == {"by h", "auto"}
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "validator_records")
    assert event.materialization.metadata["blacklisted"].value == 2
