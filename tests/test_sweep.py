"""`charrnn sweep`: Optuna trials that are real runs, read back with Optuna's own `load_study`;
workers sharing a journal file, and a real PostgreSQL server that the tests start."""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import assert_clean_error, run_cli

optuna = pytest.importorskip("optuna")
sqlalchemy = pytest.importorskip("sqlalchemy")

from charrnn.config import build_config  # noqa: E402
from charrnn.data import Source  # noqa: E402
from charrnn.metrics import Event, read_metrics  # noqa: E402
from charrnn.sweep import DEFAULT_SPACE, Budget, Reporter, run_sweep  # noqa: E402

SPACE = {  # tiny models, so that a trial takes a fraction of a second
    "model.cell": ["rnn", "gru"],
    "model.hidden_size": 16,
    "model.num_layers": 1,
    "train.lr": {"low": 0.001, "high": 0.03, "log": True},
    "train.batch_size": 4,
    "train.seq_len": 8,
}
CADENCE = ["-s", "train.eval_every=10", "-s", "train.log_every=5"]
SLOWER = ["-s", "train.eval_every=50", "-s", "train.log_every=50"]  # time budgets: fewer checkpoints
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    text = "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(600)) + "\n"
    (tmp_path / "c.txt").write_text(text)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path / "c.txt"


def sweep_args(sweep_dir: str, trials: int, budget: int | str) -> list[str]:
    """A sweep of c.txt; `budget` per trial: steps (an int) or a duration ("2s")."""
    limit = ["--steps", str(budget)] if isinstance(budget, int) else ["--budget", budget]
    return ["sweep", "c.txt", "-o", sweep_dir, "--trials", str(trials), *limit]


def load_study(sweep_dir: Path, storage: str | None = None) -> optuna.Study:
    """The study as Optuna itself reads it back."""
    if storage is None:
        backend = optuna.storages.journal.JournalFileBackend(str(sweep_dir / "study.journal"))
        storage = optuna.storages.JournalStorage(backend)
    return optuna.load_study(study_name=sweep_dir.name, storage=storage)


def best_logged(run_dir: Path) -> float:
    return min(e["val_loss"] for e in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in e)


def test_each_trial_is_a_run_whose_best_loss_is_its_value_and_best_yaml_trains(corpus: Path) -> None:
    folder = corpus.parent
    args = [*sweep_args("s", 4, 30), "--space", "space.yaml", "--seed", "3", "--pruner", "none", *CADENCE]
    proc = run_cli(*args, cwd=folder)
    assert proc.returncode == 0, proc.stderr.decode()
    study = load_study(folder / "s")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert trials[0].params == {"model.cell": "gru", "train.lr": 0.002}  # first, the config as it stands
    table = proc.stdout.decode().splitlines()
    assert table[0].split()[:4] == ["trial", "state", "best", "val"]
    assert [int(line.split()[0]) for line in table[1:]] == [t.number for t in sorted(trials, key=lambda t: t.value)]
    for t in trials:
        run = folder / "s" / f"trial-{t.number:04d}"
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.value == pytest.approx(best_logged(run), abs=1e-4)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["model"]["cell"] == t.params["model.cell"]
        assert config["train"]["lr"] == t.params["train.lr"]
        assert config["train"]["max_steps"] == 30
        assert t.intermediate_values == {
            e["step"]: e["val_loss"] for e in read_metrics(run / "metrics.jsonl") if "val_loss" in e
        }
    best = yaml.safe_load((folder / "s" / "best.yaml").read_text())
    assert best == build_config([study.best_trial.user_attrs["config"]]).to_dict()
    assert best["train"]["lr"] == study.best_trial.params["train.lr"]
    retrain = run_cli("train", "c.txt", "-c", "s/best.yaml", "-o", "again", "--steps", "30", "-q", cwd=folder)
    assert retrain.returncode == 0, retrain.stderr.decode()
    assert best_logged(folder / "again") == pytest.approx(study.best_value, abs=1e-4)  # the same run, again
    again = run_cli(*args, cwd=folder)  # the study has its trials: the summary alone
    assert again.returncode == 0 and again.stdout == proc.stdout
    assert len(load_study(folder / "s").trials) == 4


def test_the_pruner_stops_a_hopeless_trial_after_the_evaluation_that_condemns_it(corpus: Path) -> None:
    folder = corpus.parent
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "j.journal")))
    study = optuna.create_study(study_name="p", storage=storage)
    for lr in (0.03, 0.03, 0.03, 1e-5):  # three good trials, then one that cannot learn in time
        study.enqueue_trial({"train.lr": lr})
    space = {**SPACE, "model.cell": "rnn", "train.lr": {"low": 1e-5, "high": 0.03, "log": True}}
    layers = [{"train": {"eval_every": 10, "log_every": 5}}]
    done = run_sweep(
        [Source("c.txt", path=corpus)],
        folder / "p",
        4,
        Budget(steps=60),
        layers,
        space,
        str(folder / "j.journal"),
        "p",
        log=lambda line: None,
    )
    states = [t.state for t in sorted(done.trials, key=lambda t: t.number)]
    assert states[:3] == [optuna.trial.TrialState.COMPLETE] * 3
    assert states[3] == optuna.trial.TrialState.PRUNED
    hopeless = done.trials[3]
    events = read_metrics(folder / "p" / "trial-0003" / "metrics.jsonl")
    assert events[-1]["step"] == max(hopeless.intermediate_values) < 60  # stopped where it was judged
    assert (folder / "p" / "trial-0003" / "latest.npz").exists()  # with that evaluation's checkpoint


class Recording:
    """What a trial is told: (value, step) reports, and the pruner's answer."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int]] = []
        self.attrs: dict = {}

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return False

    def set_user_attr(self, key: str, value: object) -> None:
        self.attrs[key] = value


def test_the_default_space_is_the_one_the_docs_show() -> None:
    page = (Path(__file__).parent.parent / "docs" / "sweeps.md").read_text()
    block = page[page.index("The default space:") :]
    shown = yaml.safe_load(block[block.index("```yaml") + 7 : block.index("```", block.index("```yaml") + 7)])
    assert shown == DEFAULT_SPACE


def test_a_time_budget_compares_trials_at_equal_shares_of_the_minutes() -> None:
    trial = Recording()
    reporter = Reporter(trial, Budget(seconds=100.0))
    for step, elapsed, loss in ((10, 3.5, 2.0), (20, 6.2, 1.8), (25, 6.9, 1.7), (30, 9.0, 1.6)):
        reporter.write(Event(step, 2.0, 0.01, 1000.0, elapsed, evaluated=True, val_loss=loss))
    reporter.write(Event(35, 2.0, 0.01, 1000.0, 9.5))  # a training-loss line: nothing to report
    assert trial.reports == [(2.0, 3), (2.0, 4), (2.0, 5), (1.8, 6), (1.8, 7), (1.8, 8), (1.6, 9)]
    assert trial.attrs["step"] == 30
    steps = Recording()
    by_steps = Reporter(steps, Budget(steps=100))
    for step, loss in ((10, 2.0), (20, 1.8)):
        by_steps.write(Event(step, 2.0, 0.01, 1000.0, step / 10, evaluated=True, val_loss=loss))
    assert steps.reports == [(2.0, 10), (1.8, 20)]


def start_worker(folder: Path, *args: str) -> subprocess.Popen:
    """`charrnn ARGS` in the background, one BLAS thread, its output in a log file (`.log`)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD)
    log = folder / f"worker-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "charrnn", *args], cwd=folder, stdout=out, stderr=out, env=env)
    worker.log = log
    return worker


def finish(worker: subprocess.Popen) -> None:
    assert worker.wait(timeout=300) == 0, worker.log.read_text()


def check_shared(study: optuna.Study, folder: Path, trials: int) -> None:
    """Every trial ran once, in its own directory, by one of the workers; together they made
    the study's --trials (a worker that saw N-1 and another that saw the same may add one)."""
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    assert trials <= len(finished) <= trials + 1
    assert len({t.user_attrs["pid"] for t in finished}) == 2
    for t in finished:
        events = read_metrics(folder / t.user_attrs["run_dir"] / "metrics.jsonl")
        assert [e["step"] for e in events] == sorted({e["step"] for e in events})  # trained once, not twice


def test_two_workers_share_one_journal_and_no_trial_runs_twice(corpus: Path) -> None:
    args = [*sweep_args("s", 8, 200), "--space", "space.yaml", *CADENCE]
    workers = [start_worker(corpus.parent, *args, "--seed", str(seed)) for seed in (1, 2)]
    for worker in workers:
        finish(worker)
    check_shared(load_study(corpus.parent / "s"), corpus.parent, 8)


def wait_for(what: str, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(0.05)


def running_trial(study_of) -> optuna.trial.FrozenTrial | None:
    try:
        running = study_of().get_trials(states=(optuna.trial.TrialState.RUNNING,))
    except KeyError:  # no such study yet
        return None
    except sqlalchemy.exc.SQLAlchemyError:  # a worker is creating Optuna's tables as this reader does
        return None
    return running[0] if running else None


def test_a_killed_worker_leaves_its_trial_failed_and_the_study_goes_on(corpus: Path) -> None:
    folder = corpus.parent
    doomed = start_worker(folder, *sweep_args("s", 3, "2s"), "--space", "space.yaml", *SLOWER)
    # killed as its first trial starts training (its run's config written), well inside the 2 s it has
    wait_for("the first trial to start", lambda: (folder / "s" / "trial-0000" / "config.yaml").exists())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert running_trial(lambda: load_study(folder / "s")).number == 0  # a journal has no heartbeat
    survivor = run_cli(*sweep_args("s", 3, "2s"), "--space", "space.yaml", *SLOWER, cwd=folder)
    assert survivor.returncode == 0, survivor.stderr.decode()
    assert "marked 1 trial(s) failed: their worker stopped without finishing them" in survivor.stderr.decode()
    states = {t.number: t.state.name for t in load_study(folder / "s").trials}
    assert states == {0: "FAIL", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}


def test_a_sweep_refuses_bad_input_in_one_line(corpus: Path) -> None:
    folder = corpus.parent
    (folder / "typo.yaml").write_text("model.hiden_size: [16, 32]\n")
    (folder / "range.yaml").write_text("train.lr: {low: 0.0, high: 0.1, log: true}\n")
    (folder / "value.yaml").write_text("model.cell: [rnn, transformer]\n")
    cases = {
        ("--space", "typo.yaml"): "did you mean 'hidden_size'",
        ("--space", "range.yaml"): "a log range needs low > 0",
        ("--space", "value.yaml"): "model.cell: must be",
        ("--storage", "postgresql://me:secret@127.0.0.1:1/x"): "cannot open the study storage 127.0.0.1:1/x",
    }
    for extra, message in cases.items():
        proc = run_cli(*sweep_args("bad", 2, 10), *extra, cwd=folder)
        assert_clean_error(proc, 2 if "space" in extra[0] else 1, message)
        assert b"secret" not in proc.stderr
    assert_clean_error(run_cli("sweep", "c.txt", "-o", "bad", cwd=folder), 2, "a sweep needs a budget per trial")
    no_validation = run_cli(*sweep_args("bad", 2, 10), "-s", "train.val_fraction=0", cwd=folder)
    assert_clean_error(no_validation, 2, "train.val_fraction must be > 0")
    assert_clean_error(
        run_cli(*sweep_args("bad", 2, 10)[:1], "-", *sweep_args("bad", 2, 10)[2:], cwd=folder, input=b"abc"),
        2,
        "give files, not",
    )
    code = "import sys; sys.modules['optuna'] = None\nfrom charrnn.cli import run; sys.exit(run(sys.argv[1:]))"
    without = subprocess.run([sys.executable, "-c", code, *sweep_args("bad", 2, 10)], cwd=folder, capture_output=True)
    assert_clean_error(without, 1, "pip install 'charrnn[sweep]'")
    first = run_cli(*sweep_args("same", 1, 10), "--space", "space.yaml", *CADENCE, cwd=folder)
    assert first.returncode == 0, first.stderr.decode()
    other = run_cli(*sweep_args("same", 2, 10), cwd=folder)  # the default space: not this study's
    assert_clean_error(other, 2, "was started with another space")


# A real PostgreSQL server, as a database on another machine would be, started for these tests.
PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"))), None)
needs_postgres = pytest.mark.skipif(PG_BIN is None, reason="PostgreSQL is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """`initdb` in a temporary directory and `postgres` on a free port; its URL. PostgreSQL will
    not run as root, so under root both run as `nobody`."""
    root = Path(tempfile.mkdtemp(prefix="charrnn-pg-"))
    user = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    data, port = root / "data", free_port()
    init = [f"{PG_BIN}/initdb", "-D", str(data), "-U", "charrnn", "--auth=trust", "--locale=C", "-E", "UTF8"]
    subprocess.run(init, check=True, capture_output=True, cwd=root, **user)
    server = subprocess.Popen(
        [f"{PG_BIN}/postgres", "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
        **user,
    )
    url = f"postgresql://charrnn@127.0.0.1:{port}/postgres"
    try:
        import psycopg

        def accepts() -> bool:
            try:
                psycopg.connect(url).close()
                return True
            except psycopg.OperationalError:
                assert server.poll() is None, "postgres exited"
                return False

        wait_for("postgres to accept connections", accepts)
        yield url
    finally:
        server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown: do not wait for clients to leave
        server.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


@needs_postgres
def test_workers_share_a_study_in_postgresql_and_a_killed_ones_trial_fails_by_heartbeat(
    corpus: Path, postgres: str
) -> None:
    folder = corpus.parent
    common = ["--space", "space.yaml", "--storage", postgres, "--study", "pg", "--heartbeat", "1", *SLOWER]
    doomed = start_worker(folder, *sweep_args("a", 6, "2s"), *common)
    wait_for("a trial to start", lambda: running_trial(lambda: optuna.load_study(study_name="pg", storage=postgres)))
    wait_for("it to start training", lambda: (folder / "a" / "trial-0000" / "config.yaml").exists())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    killed_at = time.monotonic()
    wait_for("the heartbeat's grace period", lambda: time.monotonic() - killed_at > 2.5)
    workers = [
        start_worker(folder, *sweep_args(name, 6, "2s"), *common, "--seed", seed)
        for name, seed in (("b", "1"), ("c", "2"))
    ]
    for worker in workers:
        finish(worker)
    told = [worker.log.read_text().count("marked 1 trial(s) failed: their worker stopped") for worker in workers]
    assert any(told)  # by the heartbeat: one of the two (or both, at once) found it stale
    study = optuna.load_study(study_name="pg", storage=postgres)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert study.trials[0].user_attrs["pid"] == doomed.pid
    assert study.user_attrs["budget"] == {"seconds": 2.0, "steps": None}
    assert {Path(t.user_attrs["run_dir"]).parent.name for t in study.trials[1:]} == {"b", "c"}  # two "machines"
    check_shared(study, folder, 6)


@needs_postgres
def test_workers_started_at_once_on_an_empty_database_both_join(corpus: Path, postgres: str) -> None:
    """Both create Optuna's tables at the same moment; the one that loses that race tries again."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as connection:
        connection.execute("CREATE DATABASE fresh")
    fresh = postgres.rsplit("/", 1)[0] + "/fresh"
    common = ["--space", "space.yaml", "--storage", fresh, "--study", "both", *CADENCE]
    workers = [start_worker(corpus.parent, *sweep_args(name, 4, 20), *common) for name in ("x", "y")]
    for worker in workers:
        finish(worker)
    assert len(optuna.load_study(study_name="both", storage=fresh).trials) in (4, 5)
