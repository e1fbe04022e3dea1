"""The configuration (`charrnn.config`): keys, types, validation, YAML, and the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import assert_clean_error, run_cli

from charrnn.config import Config, build_config, load_yaml, parse_override
from charrnn.errors import InvalidUsageError

CONFIGS = Path(__file__).parent.parent / "configs"


def test_overrides_are_typed_by_yaml() -> None:
    config = build_config([parse_override("model.hidden_size=256"), parse_override("train.lr=3e-4")])
    assert config.model.hidden_size == 256 and config.train.lr == 3e-4


def test_unknown_key_names_the_path_and_the_nearest_key() -> None:
    with pytest.raises(InvalidUsageError, match=r"model\.hiden_size.*hidden_size"):
        build_config([{"model": {"hiden_size": 3}}])
    with pytest.raises(InvalidUsageError, match="unknown config key trian"):
        build_config([{"trian": {}}])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(InvalidUsageError, match=r"train\.batch_size: expected int"):
        build_config([{"train": {"batch_size": "big"}}])
    with pytest.raises(InvalidUsageError, match="expected int"):
        build_config([{"train": {"batch_size": True}}])


@pytest.mark.parametrize(
    "override",
    [
        "model.hidden_size=-1",
        "train.seq_len=0",
        "model.cell=transformer",
        "model.dropout=1.0",
        "train.lr=0",
        "model.hidden_size=10000000",
        "train.dtype=float16",
        "train.seq_len=1000000000000",
    ],
)
def test_absurd_values_are_refused_naming_their_key(override: str) -> None:
    with pytest.raises(InvalidUsageError, match=f"config key {override.split('=')[0]}:"):
        build_config([parse_override(override)])


@pytest.mark.parametrize("text", ["model.hidden_size", "=3", "noequals"])
def test_malformed_set_is_a_usage_error(text: str) -> None:
    with pytest.raises(InvalidUsageError, match="KEY=VALUE"):
        parse_override(text)


def test_python_tags_in_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(InvalidUsageError, match="not plain YAML"):
        load_yaml(path)


def test_default_yaml_lists_every_key_with_the_dataclass_defaults() -> None:
    """configs/default.yaml and the dataclasses are the same source of truth for defaults."""
    shipped = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    defaults = Config().to_dict()
    assert set(shipped) == set(defaults)
    for section in defaults:
        assert set(shipped[section]) == set(defaults[section]), section
    assert build_config([shipped]).to_dict() == defaults


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_is_valid(name: str) -> None:
    build_config([load_yaml(CONFIGS / name)])


def test_train_refuses_python_tagged_yaml_in_one_line(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "evil.yaml").write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    assert_clean_error(run_cli("train", str(corpus), "-c", "evil.yaml", cwd=tmp_path), 2, "not plain YAML")
    assert not (tmp_path / "pwned").exists()


def test_by_passes_rules_apply_in_turn_from_the_passes_they_reach() -> None:
    config = build_config(
        [
            {"model": {"dropout": 0.3, "weight_drop": 0.2}},
            parse_override("model.by_passes=[{passes: 40, dropout: 0.4}, {passes: 50, weight_drop: 0.3}]"),
        ]
    )
    rates = {p: (m.dropout, m.weight_drop) for p in (None, 39.9, 40, 49, 55) for m in [config.model.for_passes(p)]}
    assert rates == {None: (0.3, 0.2), 39.9: (0.3, 0.2), 40: (0.4, 0.2), 49: (0.4, 0.2), 55: (0.4, 0.3)}
    assert config.model.for_passes(55).regularisers().dropout == 0.4 and config.model.regularisers().dropout == 0.3


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("[{dropout: 0.4}]", r"model\.by_passes\[0\]: must be a mapping with passes"),
        ("[{passes: 40, dropot: 0.4}]", r"model\.by_passes\[0\]\.dropot.*did you mean 'dropout'"),
        ("[{passes: 40, cell: lstm}]", r"unknown config key model\.by_passes\[0\]\.cell"),
        ("[{passes: 40, dropout: 1.5}]", r"model\.by_passes\[0\]\.dropout: must be in \[0, 1\)"),
        ("[{passes: 40, dropout: big}]", r"model\.by_passes\[0\]\.dropout: must be a number"),
        ("[{passes: 40}, {passes: 30}]", r"model\.by_passes\[1\]\.passes: must be > 40"),
        ("[{passes: 0}]", r"model\.by_passes\[0\]\.passes: must be > 0"),
        ("{passes: 40}", r"model\.by_passes: expected list"),
        ("[3]", r"model\.by_passes\[0\]: must be a mapping"),
    ],
)
def test_malformed_by_passes_names_the_entry_and_the_rule(rules: str, message: str) -> None:
    with pytest.raises(InvalidUsageError, match=message):
        build_config([parse_override(f"model.by_passes={rules}")])
