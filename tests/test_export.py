"""export (safetensors in PyTorch's layout, ONNX) and import, checked against independent
readers: torch's own modules with load_state_dict(strict=True), and onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, run_cli

from charrnn import checkpoint
from charrnn.config import build_config
from charrnn.model import ModelShape, init_params
from charrnn.rundir import create_run, find_model
from charrnn.vocab import Vocab

safetensors_numpy = pytest.importorskip("safetensors.numpy")
EXAMPLES = Path(__file__).parent.parent / "examples"
TEXT = "".join(np.random.default_rng(0).choice(list("abcdefgh \n"), 1000))
CELLS = ["rnn", "lstm", "gru"]
TINY_RUN = ["--steps", "5", "--batch-size", "4", "--seq-len", "16"]


def make_run(folder: Path, cell: str, layers: int = 2, H: int = 16, dtype: str = "float32", scale: float = 2.0) -> Path:
    """A run directory holding random weights (scaled up so every nonlinearity is exercised)."""
    vocab = Vocab.from_chars("abcdefgh \n")
    config = build_config(
        [{"model": {"cell": cell, "hidden_size": H, "num_layers": layers}, "train": {"dtype": dtype}}]
    )
    shape = ModelShape(len(vocab), cell, H, layers)
    params = init_params(shape, np.random.default_rng(1), np.dtype(dtype))
    for p in params.values():
        p *= scale
    create_run(folder / f"{cell}-{dtype}", config, vocab, params)
    return folder / f"{cell}-{dtype}"


def charrnn_logits(run: Path, ids: np.ndarray, chunks: int) -> np.ndarray:
    """charrnn's logits (T, B, V) over ids (T, B), in `chunks` calls with the state carried."""
    model = checkpoint.load(find_model(run)).model()
    state, out = model.initial_state(ids.shape[1]), []
    for part in np.array_split(ids, chunks):
        logits, state = model.logits(part, state)
        out.append(logits.transpose(1, 2, 0).copy())
    return np.concatenate(out)


@pytest.mark.parametrize("cell", CELLS)
def test_safetensors_loads_strictly_into_torch_modules_and_matches_logits(cell: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    run = make_run(tmp_path, cell)
    proc = run_cli("export", "-m", str(run), "m.safetensors", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    kind = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    net = torch.nn.Module()
    net.rnn, net.fc = kind(10, 16, num_layers=2), torch.nn.Linear(16, 10)
    net.load_state_dict(load_file(tmp_path / "m.safetensors"), strict=True)
    meta = safetensors_meta(tmp_path / "m.safetensors")
    vocab = Vocab(json.loads(meta["vocab"]))
    assert (meta["cell"], meta["hidden_size"], meta["num_layers"]) == (cell, "16", "2")
    ids = vocab.encode(TEXT).astype(np.int64)[:, None]
    state, outs = None, []
    with torch.no_grad():
        for part in np.array_split(ids, 4):  # 1,000 characters in 4 chunks, the state carried
            y, state = net.rnn(torch.nn.functional.one_hot(torch.from_numpy(part), 10).float(), state)
            outs.append(net.fc(y).numpy())
    diff = np.abs(np.concatenate(outs) - charrnn_logits(run, ids, 3)).max()
    print(f"torch {cell} 2x16: max |logit difference| {diff:.2e}")
    assert diff <= 1e-5


def safetensors_meta(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return f.metadata()


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_runs_in_onnxruntime_and_matches_logits_over_two_chunks(cell: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    run = make_run(tmp_path, cell)
    assert run_cli("export", "-m", str(run), "m.onnx", cwd=tmp_path).returncode == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    meta = session.get_modelmeta().custom_metadata_map
    vocab = Vocab(json.loads(meta["vocab"]))
    assert int(meta["start_id"]) == vocab.start_id
    ids = np.stack([vocab.encode(TEXT[i::3][:300]) for i in range(3)], axis=1).astype(np.int64)  # (300, 3)
    ids[0, 1] = -1  # "no input" works as in charrnn
    states = {s.name: np.zeros((2, 3, 16), np.float32) for s in session.get_inputs() if s.name != "ids"}
    assert sorted(states) == (["c0", "h0"] if cell == "lstm" else ["h0"])
    outs = []
    for part in np.array_split(ids, 2):
        logits, *finals = session.run(None, {"ids": part, **states})
        states = dict(zip(states, finals, strict=True))
        outs.append(logits)
    diff = np.abs(np.concatenate(outs) - charrnn_logits(run, ids, 2)).max()
    print(f"onnxruntime {cell} 2x16: max |logit difference| {diff:.2e}")
    assert diff <= 1e-5


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_export_then_import_gives_bit_identical_parameters_that_sample_and_train(
    cell: str, dtype: str, tmp_path: Path
) -> None:
    run = make_run(tmp_path, cell, dtype=dtype)
    assert run_cli("export", "-m", str(run), "m.safetensors", cwd=tmp_path).returncode == 0
    proc = run_cli("import", "m.safetensors", "-o", "back", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    before, after = checkpoint.load(run / "latest.npz"), checkpoint.load(tmp_path / "back" / "latest.npz")
    assert before.params.keys() == after.params.keys()
    for name, array in before.params.items():
        assert after.params[name].dtype == array.dtype
        assert after.params[name].tobytes() == array.tobytes(), name
    assert after.vocab == before.vocab and after.meta["step"] == 0
    (tmp_path / "c.txt").write_text(TEXT * 3)
    assert run_cli("sample", "-m", "back", "-n", "20", cwd=tmp_path).returncode == 0
    assert run_cli("eval", "-m", "back", "c.txt", cwd=tmp_path).returncode == 0
    trained = run_cli("train", "c.txt", "-o", "back", "--steps", "3", "-q", "-s", "train.batch_size=4", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr.decode()
    assert checkpoint.load(tmp_path / "back" / "latest.npz").meta["step"] == 3


def _write(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str] | None) -> None:
    path.write_bytes(safetensors_numpy.save(tensors, meta))


@pytest.fixture
def exported(tmp_path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    run = make_run(tmp_path, "lstm")
    assert run_cli("export", "-m", str(run), "good.safetensors", cwd=tmp_path).returncode == 0
    tensors = safetensors_numpy.load_file(tmp_path / "good.safetensors")
    return tensors, safetensors_meta(tmp_path / "good.safetensors")


def _gru_layer(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Layer 1 of the LSTM replaced by a GRU layer of the same size."""
    out = dict(tensors)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        out[f"rnn.{name}_l1"] = out[f"rnn.{name}_l1"][: 3 * 16]
    return out


BAD = {
    "missing key": (lambda t: {k: v for k, v in t.items() if k != "fc.bias"}, "missing ['fc.bias']"),
    "extra key": (lambda t: t | {"rnn.weight_ih_l0_reverse": t["rnn.weight_ih_l0"]}, "unexpected"),
    "wrong shape": (lambda t: t | {"fc.bias": np.zeros(11, np.float32)}, "fc.bias has shape (11,), expected (10,)"),
    "hidden shape": (lambda t: t | {"rnn.bias_hh_l1": np.zeros(60, np.float32)}, "rnn.bias_hh_l1 has shape"),
    "two cells": (_gru_layer, "two cells mixed"),
    "nan": (lambda t: t | {"rnn.weight_hh_l1": t["rnn.weight_hh_l1"] * np.nan}, "NaN"),
}


@pytest.mark.parametrize("case", BAD)
def test_import_refuses_bad_state_dicts_in_one_line_writing_nothing(case: str, exported, tmp_path: Path) -> None:
    tensors, meta = exported
    change, message = BAD[case]
    _write(tmp_path / "bad.safetensors", change(tensors), meta)
    proc = run_cli("import", "bad.safetensors", "-o", "out", cwd=tmp_path)
    assert_clean_error(proc, 1, message)
    assert not (tmp_path / "out").exists()


def test_import_vocabulary_from_metadata_or_vocab_file(exported, tmp_path: Path) -> None:
    tensors, meta = exported
    _write(tmp_path / "bare.safetensors", tensors, None)
    assert_clean_error(run_cli("import", "bare.safetensors", "-o", "out", cwd=tmp_path), 2, "--vocab")
    (tmp_path / "short.json").write_text(json.dumps(list("abc")))
    short = run_cli("import", "bare.safetensors", "-o", "out", "--vocab", "short.json", cwd=tmp_path)
    assert_clean_error(short, 1, "vocabulary has 3 characters")
    chars = json.loads(meta["vocab"])
    (tmp_path / "object.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))  # keys in id order
    as_object = run_cli("import", "bare.safetensors", "-o", "out", "--vocab", "object.json", cwd=tmp_path)
    assert_clean_error(as_object, 2, "object.json", "JSON list")
    (tmp_path / "v.json").write_text(meta["vocab"])
    proc = run_cli("import", "bare.safetensors", "-o", "out", "--vocab", "v.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert checkpoint.load(tmp_path / "out" / "latest.npz").shape.cell == "lstm"
    again = run_cli("import", "bare.safetensors", "-o", "out", "--vocab", "v.json", cwd=tmp_path)
    assert_clean_error(again, 2, "already holds a checkpoint")


def test_pickles_are_refused_unread_with_a_hint(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = b"\x80\x04cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    for name in ("model.pt", "model.pth", "model.safetensors"):
        (tmp_path / name).write_bytes(payload)
        proc = run_cli("import", name, "-o", "out", cwd=tmp_path)
        assert_clean_error(proc, 2, "pickle", "safetensors")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_not_a_safetensors_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert_clean_error(run_cli("import", "junk.safetensors", "-o", "out", cwd=tmp_path), 1, "not a readable")
    assert_clean_error(run_cli("import", "none.safetensors", "-o", "out", cwd=tmp_path), 2, "cannot read")


def test_a_missing_extra_is_one_line_saying_how_to_install_it(tmp_path: Path) -> None:
    run = make_run(tmp_path, "rnn", layers=1)
    code = (
        "import sys; sys.modules['safetensors'] = sys.modules['onnx'] = None\n"
        "from charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    )
    for out in ("m.safetensors", "m.onnx"):
        proc = subprocess.run(
            [sys.executable, "-c", code, "export", "-m", str(run), out], cwd=tmp_path, capture_output=True
        )
        assert_clean_error(proc, 1, "pip install 'charrnn[export]'")
        assert not (tmp_path / out).exists()


def test_train_sample_eval_never_import_the_optional_extras(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text(TEXT * 5)
    code = (
        "import sys\nfrom charrnn.cli import run\n"
        "args = ['-s', 'model.hidden_size=8', '-s', 'train.batch_size=4', '--steps', '2', '-q']\n"
        "assert run(['train', 'c.txt', '-o', 'r', *args]) == 0\n"
        "assert run(['sample', '-m', 'r', '-n', '5']) == 0\n"
        "assert run(['eval', '-m', 'r', 'c.txt']) == 0\n"
        "assert run(['score', '-m', 'r', 'c.txt']) == 0\n"
        "extras = {'matplotlib', 'safetensors', 'onnx', 'onnxruntime', 'torch', 'tensorboard', 'wandb', 'optuna'}\n"
        "loaded = {'starlette', 'uvicorn', 'prometheus_client', *extras} & set(sys.modules)\n"
        "assert not loaded, loaded"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    (folder / "c.txt").write_text("the cat sat on the mat.\nthe dog ran.\n" * 200)
    args = ["-s", "model.cell=lstm", "-s", "model.hidden_size=32", "-s", "train.batch_size=8", "-s", "train.seq_len=32"]
    proc = run_cli("train", "c.txt", "-o", "run", *args, "--steps", "150", "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    return folder


def test_onnx_sample_example_prints_exactly_what_greedy_sample_prints(trained_run: Path) -> None:
    pytest.importorskip("onnxruntime")
    assert run_cli("export", "-m", "run", "m.onnx", cwd=trained_run).returncode == 0
    for prime in ("the ", "", "dog"):
        example = subprocess.run(
            [sys.executable, str(EXAMPLES / "onnx_sample.py"), "m.onnx", "-p", prime, "-n", "120"],
            cwd=trained_run,
            capture_output=True,
        )
        assert example.returncode == 0, example.stderr.decode()
        greedy = run_cli("sample", "-m", "run", "--greedy", "-p", prime, "-n", "120", cwd=trained_run)
        assert example.stdout == greedy.stdout
        assert len(set(greedy.stdout.decode())) > 5  # real text, not one repeated character


def test_continue_in_pytorch_example_round_trips_through_torch(trained_run: Path) -> None:
    pytest.importorskip("torch")
    assert run_cli("export", "-m", "run", "m.safetensors", cwd=trained_run).returncode == 0
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "continue_in_pytorch.py"), "m.safetensors", "c.txt", "-o", "more", *TINY_RUN],
        cwd=trained_run,
        capture_output=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert "step 4: loss" in proc.stderr.decode()
    assert len(proc.stdout.decode()) == 200  # `charrnn sample -n 200` from the imported run
    before = checkpoint.load(trained_run / "run" / "best.npz").params
    after = checkpoint.load(trained_run / "more" / "latest.npz").params
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # torch trained it
