"""Dynamic evaluation (`charrnn.dynamic`, `charrnn eval --dynamic`): score a segment, then
update on it; the static loss from the same pass; the checkpoint never changes."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_clean_error, make_model, run_cli

import charrnn
from charrnn import DynamicSettings
from charrnn.dynamic import evaluate_dynamic, gradient_rms
from charrnn.evaluate import evaluate
from charrnn.layers.loss import xent_sum

V = 7
IDS = np.random.default_rng(0).integers(0, V, 233)


def _reference(model, ids: np.ndarray, settings: DynamicSettings, rms: dict | None) -> float:
    """The rule as written in the module docstring, one segment at a time, from scratch."""
    params = {k: v.copy() for k, v in model.params.items()}
    theta0 = {k: v.copy() for k, v in params.items()}
    if rms is not None:
        mean = np.mean(np.concatenate([r.ravel() for r in rms.values()]))
    from charrnn.model import CharRNN

    adapting = CharRNN(model.shape, params)
    state, total, n = adapting.initial_state(1), 0.0, settings.segment
    for start in range(0, len(ids) - 1, n):
        x, y = ids[start : start + n][:, None], ids[start + 1 : start + n + 1][:, None]
        x = x[: len(y)]
        logits, _ = adapting.logits(x, state)
        total += xent_sum(logits.reshape(V, -1).copy(), y.reshape(-1))
        _, state = adapting.loss(x, y, state)
        grads = adapting.backward()
        for k, p in params.items():
            if rms is None:
                p -= settings.lr * grads[k]
                p += settings.decay * (theta0[k] - p)
            else:
                p -= settings.lr / (rms[k] + 1e-8) * grads[k]
                p += np.minimum(1.0, settings.decay * rms[k] / mean) * (theta0[k] - p)
    return total / (len(ids) - 1)


@pytest.mark.parametrize("rule", ["sgd", "rms"])
def test_dynamic_loss_is_score_then_update_segment_by_segment(rule: str) -> None:
    model = make_model("gru", V=V, scale=1.0)
    rng = np.random.default_rng(1)
    rms = {k: np.abs(rng.normal(size=p.shape)) + 0.1 for k, p in model.params.items()} if rule == "rms" else None
    settings = DynamicSettings(rule, lr=0.05, decay=0.02, segment=20)
    before = {k: v.copy() for k, v in model.params.items()}
    result = evaluate_dynamic(model.shape, model.params, [IDS], settings, rms)
    assert result.dynamic.chars == result.static.chars == len(IDS) - 1
    assert result.dynamic.loss == pytest.approx(_reference(model, IDS, settings, rms), rel=1e-12)
    assert result.static.loss == pytest.approx(evaluate(model, IDS).loss, rel=1e-12)
    assert result.dynamic.loss != pytest.approx(result.static.loss, rel=1e-6)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])  # the trained weights are untouched


def test_no_learning_rate_gives_the_static_loss_and_blocks_do_not_matter() -> None:
    model = make_model("lstm", V=V, scale=1.0)
    still = evaluate_dynamic(model.shape, model.params, [IDS], DynamicSettings("sgd", lr=0.0, decay=0.5))
    assert still.dynamic.loss == pytest.approx(still.static.loss, rel=1e-12)
    settings = DynamicSettings("sgd", lr=0.1, decay=0.0, segment=16)
    whole = evaluate_dynamic(model.shape, model.params, [IDS], settings)
    pieces = evaluate_dynamic(model.shape, model.params, [IDS[:5], IDS[5:6], IDS[6:100], IDS[100:]], settings)
    assert pieces.dynamic.loss == pytest.approx(whole.dynamic.loss, rel=1e-12)


def test_adapting_to_a_repeated_text_lowers_its_loss() -> None:
    model = make_model("rnn", V=V, H=16, scale=1.0)
    text = np.tile([3, 1, 4, 1, 5], 100)
    result = evaluate_dynamic(model.shape, model.params, [text], DynamicSettings("sgd", lr=0.3, decay=0.0, segment=10))
    assert result.dynamic.loss < 0.5 * result.static.loss


def test_each_rule_has_its_own_defaults_and_given_values_win() -> None:
    assert (DynamicSettings("sgd").lr, DynamicSettings("sgd").decay) == (0.03, 0.0)
    assert DynamicSettings("rms", lr=0.5).lr == 0.5 and DynamicSettings("rms", lr=0.5).decay == 3e-3


def test_gradient_rms_is_adam_s_bias_corrected_second_moment() -> None:
    v = {"v.W": np.full((2, 2), 0.04), "m.W": np.zeros((2, 2))}
    meta = {"optimizer_t": 3, "config": {"train": {"beta2": 0.9}}}
    np.testing.assert_allclose(gradient_rms(v, meta)["W"], np.sqrt(0.04 / (1 - 0.9**3)))
    assert gradient_rms({"sum_sq.W": np.full(2, 12.0)}, meta)["W"] == pytest.approx([2.0, 2.0])
    assert gradient_rms({"velocity.W": np.ones(2)}, meta) is None
    assert gradient_rms({}, {"optimizer_t": 0}) is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rule": "adam"}, ValueError),
        ({"lr": -1.0}, ValueError),
        ({"decay": 2.0}, ValueError),
        ({"segment": 0}, ValueError),
        ({"lr": "x"}, TypeError),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        DynamicSettings(**kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dynamic")
    (folder / "train.txt").write_text("the cat sat on the mat. " * 60)
    (folder / "held.txt").write_text("the mat sat on the cat. " * 12)
    proc = run_cli("train", "train.txt", "-o", "run", *TINY, "-q", "--steps", "30", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder


def test_eval_dynamic_json_gives_both_losses_and_leaves_the_checkpoint(run: Path) -> None:
    before = (run / "run" / "best.npz").read_bytes()
    proc = run_cli("eval", "held.txt", "-m", "run", "--dynamic", "--json", cwd=run)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert set(got) == {"static", "dynamic", "settings"}
    defaults = {"rule": "rms", "lr": 5e-5, "decay": 3e-3, "segment": 50}
    assert got["settings"] == dataclasses.asdict(DynamicSettings()) == defaults
    lm = charrnn.load(run / "run")
    assert got["static"]["loss"] == pytest.approx(lm.evaluate((run / "held.txt").read_text()).loss, rel=1e-9)
    assert got["dynamic"]["loss"] < got["static"]["loss"]
    assert (run / "run" / "best.npz").read_bytes() == before
    piped = run_cli("eval", "-", "-m", "run", "--dynamic", "--json", cwd=run, input=(run / "held.txt").read_bytes())
    assert json.loads(piped.stdout) == got


def test_python_api_matches_the_cli(run: Path) -> None:
    lm = charrnn.load(run / "run")
    settings = DynamicSettings("sgd", lr=0.01, decay=0.01, segment=30)
    text = (run / "held.txt").read_text()
    proc = run_cli(
        "eval",
        "held.txt",
        "-m",
        "run",
        "--dynamic",
        "--rule",
        "sgd",
        "--dynamic-lr",
        "0.01",
        "--decay",
        "0.01",
        "--segment",
        "30",
        "--json",
        cwd=run,
    )
    assert json.loads(proc.stdout)["dynamic"]["loss"] == pytest.approx(lm.evaluate_dynamic(text, settings).dynamic.loss)


def test_rms_without_optimizer_moments_is_one_line(run: Path) -> None:
    assert run_cli("export", "m.safetensors", "-m", "run", cwd=run).returncode == 0
    assert run_cli("import", "m.safetensors", "-o", "imported", cwd=run).returncode == 0
    proc = run_cli("eval", "held.txt", "-m", "imported", "--dynamic", cwd=run)
    assert_clean_error(proc, 1, "sgd")
    assert run_cli("eval", "held.txt", "-m", "imported", "--dynamic", "--rule", "sgd", cwd=run).returncode == 0


def test_a_rate_that_overflows_gives_an_infinite_perplexity_not_a_traceback(run: Path) -> None:
    """`--dynamic-lr 1e30`: the adapted model's loss is astronomical; its perplexity (e^loss)
    overflows a float and is reported as infinite."""
    args = ["eval", "held.txt", "-m", "run", "--dynamic", "--dynamic-lr", "1e30", "--rule", "sgd"]
    proc = run_cli(*args, cwd=run)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr.decode()
    got = json.loads(run_cli(*args, "--json", cwd=run).stdout)
    assert got["dynamic"]["loss"] > 1e6 and got["dynamic"]["perplexity"] == math.inf
    assert got["static"]["perplexity"] < 100


def test_perplexity_of_a_loss_past_what_a_float_holds_is_infinite() -> None:
    from charrnn.evaluate import EvalResult

    assert EvalResult(800.0, 10).perplexity == float("inf") and EvalResult(1.0, 10).perplexity == pytest.approx(math.e)
