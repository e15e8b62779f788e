"""The round settings from the environment: defaults from their one source, a folder made absolute,
a URL kept, and a wrong value refused naming the variable."""

import pytest

from threegen_dagster.definitions import build_definitions
from threegen_dagster.rounds.source import DEFAULT_BASE
from threegen_dagster.rounds.state import COMPETITION, ROUND_MARGIN_S, SECONDS_PER_BLOCK
from threegen_dagster.settings import Settings, SettingsError


def test_defaults_and_values(tmp_path):
    plain = Settings.from_env({}, cwd=tmp_path)
    assert (plain.rounds_source, plain.competition, plain.seconds_per_block, plain.round_margin_s) == (
        DEFAULT_BASE, COMPETITION, SECONDS_PER_BLOCK, ROUND_MARGIN_S)
    given = Settings.from_env({"THREEGEN_ROUNDS_SOURCE": "state", "THREEGEN_COMPETITION": "0",
                               "THREEGEN_SECONDS_PER_BLOCK": "6", "THREEGEN_ROUND_MARGIN_S": "0"}, cwd=tmp_path)
    assert given.rounds_source == str(tmp_path / "state") and given.competition == 0
    assert given.seconds_per_block == 6.0 and given.round_margin_s == 0.0
    url = Settings.from_env({"THREEGEN_ROUNDS_SOURCE": "http://127.0.0.1:9/state/"}, cwd=tmp_path)
    assert url.rounds_source == "http://127.0.0.1:9/state"
    resource = build_definitions(given).resources["round_state"]
    assert (resource.source, resource.competition, resource.seconds_per_block) == (str(tmp_path / "state"), 0, 6.0)


@pytest.mark.parametrize("env, error", [
    ({"THREEGEN_COMPETITION": "3"}, r"THREEGEN_COMPETITION='3': 0 \(gaussian splats\), 1 \(meshes\) or 2"),
    ({"THREEGEN_SECONDS_PER_BLOCK": "0"}, r"THREEGEN_SECONDS_PER_BLOCK='0' must be greater than 0"),
    ({"THREEGEN_ROUND_MARGIN_S": "soon"}, r"THREEGEN_ROUND_MARGIN_S='soon' is not a float"),
])
def test_wrong_values_are_refused(tmp_path, env, error):
    with pytest.raises(SettingsError, match=error):
        Settings.from_env(env, cwd=tmp_path)
