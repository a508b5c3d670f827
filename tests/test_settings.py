"""One settings model (`greater.settings`): every setting's row agrees with the configs, the parser and
run.json, and the fields GReaTer and the baselines share have one default each."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest

from greater import cli_flags
from greater.methods import MethodConfig, greater_fields, greater_settings
from greater.optimizer import GreaterConfig
from greater.settings import CONFIG_FLAGS, RUN_KEYS, SETTINGS, SHARED, TUNABLE, names


def _dests(command: str) -> set[str]:
    parser = cli_flags.build()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest for a in sub._actions}


def test_every_scope_names_fields_of_its_config_and_flags_of_its_command():
    greater, method = {f.name for f in fields(GreaterConfig)}, {f.name for f in fields(MethodConfig)}
    assert set(CONFIG_FLAGS) <= greater and set(TUNABLE) <= greater
    assert set(names("baseline")) <= method and set(names("compare")) <= method
    assert set(SHARED) <= greater & method
    assert set(CONFIG_FLAGS) | set(names("baseline")) | set(RUN_KEYS) <= _dests("optimize")
    assert set(names("compare")) <= _dests("compare")
    # a GReaTer field with a flag of its own that is not in the table would be silently ignored
    assert _dests("optimize") & greater <= set(CONFIG_FLAGS)
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)  # one row each


def test_shared_fields_have_one_default_and_are_what_greater_settings_copies():
    greater, method = GreaterConfig(), MethodConfig()
    assert set(SHARED) == {"steps", "num_select", "max_new_tokens", "batch_size", "keep_top", "seed", "placement"}
    for name in SHARED:
        assert getattr(method, name) == getattr(greater, name), name
    chosen = MethodConfig(steps=7, num_select=2, max_new_tokens=33, batch_size=5, keep_top=4, seed=9, demos=2)
    copied = asdict(greater_settings(chosen))
    assert {name: copied[name] for name in SHARED} == {name: getattr(chosen, name) for name in SHARED}
    assert {k: v for k, v in copied.items() if k not in SHARED} == {
        k: v for k, v in asdict(greater).items() if k not in SHARED
    }


@pytest.mark.parametrize(
    ("option", "field", "value"),
    [("candidate_nll=TRUE", "candidate_nll", True), ("top_q=3", "top_q", 3), ("nll_weight=0.5", "nll_weight", 0.5)],
)
def test_compare_options_are_read_by_the_tables_parsers(option, field, value):
    assert greater_fields(f"greater:{option}") == {field: value}
