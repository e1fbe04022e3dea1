"""Each example learns its toy task with a fixed seed and a reduced budget; the thresholds sit
far above what an untrained or broken model scores (given in each case)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "steps", "threshold"),
    [
        ("many_to_many_delay", 150, 0.95),  # chance: 1/9 per step
        ("many_to_one_brackets", 300, 0.90),  # chance: 0.5
        ("one_to_many_spell", 100, 1.0),  # chance: 0 words
        ("encoder_decoder_reverse", 400, 0.60),  # chance: ~0 exact strings
    ],
)
def test_example_learns_its_task(name: str, steps: int, threshold: float) -> None:
    assert example(name).run(steps=steps, seed=0) >= threshold


def test_untrained_models_score_near_chance() -> None:
    """The thresholds above are meaningful: with no training the same checks fail."""
    assert example("many_to_many_delay").run(steps=0) < 0.5
    assert example("one_to_many_spell").run(steps=0) == 0.0
    assert example("encoder_decoder_reverse").run(steps=0) < 0.05
