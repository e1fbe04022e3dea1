"""The `charrnn` command: parse, call the library, print. Data to stdout, talk to stderr."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from charrnn import __version__
from charrnn.api import LanguageModel, load
from charrnn.config import ENGINES, Config, load_yaml, parse_override
from charrnn.connections import ConnectionLimits
from charrnn.data import UNITS, head, pieces, source_records, sources_from_args
from charrnn.distributed import World
from charrnn.dynamic import RULES, DynamicSettings
from charrnn.errors import CharRNNError, SignalError
from charrnn.evaluate import EvalResult
from charrnn.interop import export_safetensors, import_safetensors
from charrnn.onnx_export import export_onnx
from charrnn.plot import plot_runs
from charrnn.rundir import find_model
from charrnn.runs import format_table, list_runs
from charrnn.sample import Sampling
from charrnn.serve import Limits, api_key_from
from charrnn.serve import serve as serve_run
from charrnn.sweep import BEST, PRUNERS, Budget, load_space, run_sweep, trials_table
from charrnn.train import train as train_run
from charrnn.viz import MAX_VIZ_CHARS, write_page

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """`90s`, `10m`, `2h`, `1.5h` or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", str(value))
        if not match or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration such as 90s, 10m or 2h", param, ctx)
        return float(match.group(1)) * _UNITS[match.group(2)]


class OutputError(CharRNNError):
    """Standard output failed (a full disk, an I/O error): the result is lost, so never exit 0."""


class PipeClosed(Exception):  # noqa: N818 (not an error: the reader has all it wanted)
    """The reader of standard output closed it (`| head`): stop quietly with 141, as SIGPIPE would."""


class Stdout:
    """Where a command writes its result: standard output, as UTF-8 (lone surrogates kept). A
    closed standard output is an error before any work; a failed write (a full disk) is one
    error line, exit 1; a reader that closed the pipe (`| head`) ends the command quietly."""

    def __init__(self) -> None:
        if sys.stdout is None:
            raise CharRNNError("standard output is closed: there is nowhere to write the result")
        self._out = sys.stdout.buffer
        self.interactive = self._out.isatty()

    def write(self, *texts: str) -> None:
        self.write_all(texts)

    def write_all(self, texts: Iterable[str]) -> None:
        """Each text as it comes: a record or prime of any length goes out piece by piece."""
        for text in texts:
            self._guard(self._out.write, text.encode("utf-8", "surrogateescape"))

    def flush(self) -> None:
        self._guard(self._out.flush)

    @staticmethod
    def _guard(call: Any, *args: Any) -> None:
        try:
            call(*args)
        except BrokenPipeError:
            raise PipeClosed from None  # click would turn a BrokenPipeError into exit 1
        except OSError as err:
            raise OutputError(f"writing output: {err.strerror or err}") from None


def _load_model(ctx: click.Context, param: click.Parameter, value: str | None) -> LanguageModel:
    return load(value)


def _model_run(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    return value if value is not None else str(find_model(None).parent)


def _model(dest: str, callback: Any) -> Any:
    """`-m/--model RUN|NPZ`, the one declaration of the option, handing the command `dest`."""
    return click.option(
        "-m",
        "--model",
        dest,
        metavar="PATH",
        callback=callback,
        help="Run directory or .npz  [default: the most recent run under runs/]",
    )


# For every command that reads a model: `lm`, the `LanguageModel` that `charrnn.load` finds (by
# the run directory's model rule); for `serve`, which reloads it: `run`, the path it names.
model_option = _model("lm", _load_model)
model_path_option = _model("run", _model_run)


def run_dir_option(required: bool, help: str) -> Any:
    """`-o/--run-dir DIR`, the run directory a command writes."""
    return click.option(
        "-o", "--run-dir", required=required, type=click.Path(file_okay=False, path_type=Path), help=help
    )


def _default_run_dir(corpus: tuple[str, ...]) -> Path:
    name = "stdin" if corpus[0] == "-" else Path(corpus[0]).stem or "run"
    return Path("runs") / name


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="charrnn")
def cli() -> None:
    """Train character-level recurrent language models, sample from them, evaluate them."""


def _config_keys_help() -> str:
    """Every config key with its default, from the dataclasses (the one source of defaults)."""
    lines = ["\b", "Config keys (-s KEY=VALUE, or in a -c YAML file) and their defaults:"]
    for section, values in Config().to_dict().items():
        lines.append(f"  {section}: " + ", ".join(f"{key}={value}" for key, value in values.items()))
    return "\n".join(lines)


def config_options(command: Any) -> Any:
    """`-c/--config FILE` and `-s/--set KEY=VALUE`, the config layers of `train` and `sweep`."""
    command = click.option(
        "-s",
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config key, e.g. model.hidden_size=256 (repeatable).",
    )(command)
    return click.option(
        "-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="YAML config file."
    )(command)


def config_layers(config_file: Path | None, overrides: tuple[str, ...]) -> list[dict[str, Any]]:
    """The config file's values, then each override's, in order."""
    layers: list[dict[str, Any]] = [load_yaml(config_file)] if config_file else []
    return layers + [parse_override(text) for text in overrides]


@cli.command(epilog=_config_keys_help())
@click.argument("corpus", nargs=-1, required=True)
@config_options
@run_dir_option(required=False, help="Run directory  [default: runs/<corpus name>]")
@click.option(
    "--steps", type=click.IntRange(min=0), help="Steps to run in this invocation  [default: until train.max_steps]"
)
@click.option("--time", "time_limit", type=Duration(), help="Stop cleanly after this wall time (90s, 10m, 2h).")
@click.option("--seed", type=click.IntRange(min=0), help="Shortcut for --set train.seed=N.")
@click.option("--engine", type=click.Choice(ENGINES), help="Shortcut for --set train.engine=NAME.")
@click.option("--device", help="Shortcut for --set train.device=DEVICE (torch engine: cpu, cuda, cuda:N, mps).")
@click.option("--fresh", is_flag=True, help="Start over even if the run directory has a checkpoint.")
@click.option(
    "--init-from",
    type=click.Path(path_type=Path),
    help="Fine-tune: a new run starts from this run's (or .npz's) weights; fresh optimizer and schedule.",
)
@click.option(
    "--tensorboard", is_flag=True, help="Shortcut for --set log.tensorboard=true: event files in RUN/tensorboard."
)
@click.option("--wandb", metavar="PROJECT", help="Shortcut for --set log.wandb=PROJECT: log to Weights & Biases.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; a few plain log lines.")
def train(
    corpus: tuple[str, ...],
    config_file: Path | None,
    overrides: tuple[str, ...],
    run_dir: Path | None,
    steps: int | None,
    time_limit: float | None,
    seed: int | None,
    engine: str | None,
    device: str | None,
    fresh: bool,
    init_from: Path | None,
    tensorboard: bool,
    wandb: str | None,
    quiet: bool,
) -> None:
    """Train on CORPUS files (or - for standard input), resuming the run directory's checkpoint.

    Writes config.yaml, latest.npz, best.npz and metrics.jsonl into the run directory. With
    --init-from, a new run starts from another run's weights (its vocabulary extended by new
    characters) with a fresh optimizer, data cursor and schedule from the config.
    """
    layers = config_layers(config_file, overrides)
    shortcuts = {"seed": seed, "engine": engine, "device": device}
    layers += [{"train": {key: value}} for key, value in shortcuts.items() if value is not None]
    layers += [{"log": {"tensorboard": True}}] if tensorboard else []
    layers += [{"log": {"wandb": wandb}}] if wandb else []
    sources = sources_from_args(corpus)
    train_run(
        sources,
        run_dir or _default_run_dir(corpus),
        layers,
        steps=steps,
        time_limit=time_limit,
        fresh=fresh,
        progress_bar=False if quiet else None,
        init_from=init_from,
    )


@cli.command()
@click.argument("corpus", nargs=-1, required=True)
@click.option(
    "-o",
    "--sweep-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the trials' run directories (trial-NNNN), best.yaml and the journal file go.",
)
@click.option("--trials", type=click.IntRange(min=0), default=20, help="Trials in the study, counting every worker's.")
@click.option("--budget", type=Duration(), help="Wall time per trial (10m, 1h): each trial trains this long.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps per trial (instead of, or with, --budget).")
@click.option(
    "--space",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML search space: config keys to choices, ranges or values  [default: cell, size, layers, rates, lr, ...]",
)
@config_options
@click.option(
    "--storage",
    help="Optuna storage URL shared by workers on many machines (postgresql://...)  [default: SWEEP_DIR/study.journal]",
)
@click.option("--study", "study_name", help="The study's name in the storage  [default: SWEEP_DIR's name]")
@click.option("--pruner", type=click.Choice(PRUNERS), default="median", help="Stops trials that cannot win.")
@click.option("--seed", type=click.IntRange(min=0), help="The sampler's seed (give each worker its own).")
@click.option(
    "--heartbeat",
    type=click.IntRange(min=1),
    default=60,
    help="Database storage: seconds between a trial's heartbeats; silent for twice this, it is failed.",
)
def sweep(
    corpus: tuple[str, ...],
    sweep_dir: Path,
    trials: int,
    budget: float | None,
    steps: int | None,
    space: Path | None,
    config_file: Path | None,
    overrides: tuple[str, ...],
    storage: str | None,
    study_name: str | None,
    pruner: str,
    seed: int | None,
    heartbeat: int,
) -> None:
    """Search for the settings that model CORPUS best in a budget: Optuna trials, each a run
    directory trained by `train`, until the study has --trials of them. Run the same command in
    more processes (and on more machines, with --storage) to add workers. Prints the trials,
    best first; the best trial's config goes to SWEEP_DIR/best.yaml."""
    out = Stdout()
    study = run_sweep(
        sources_from_args(corpus),
        sweep_dir,
        trials,
        Budget(budget, steps),
        config_layers(config_file, overrides),
        load_space(space),
        storage,
        study_name,
        pruner,
        seed,
        heartbeat,
        log=lambda line: click.echo(line, err=True),
    )
    out.write(trials_table(study), "\n")
    out.flush()
    best = sweep_dir / BEST
    if best.exists():
        click.echo(f"the best trial's config: {best} (charrnn train CORPUS -c {best})", err=True)


@cli.command()
@model_option
@click.option("-n", "--len", "length", type=click.IntRange(min=0), default=200, help="Most characters to generate.")
@click.option(
    "-t",
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    help="Softmax temperature (> 0); lower is more conservative. Applied first.",
)
@click.option(
    "-k",
    "--top-k",
    type=click.IntRange(min=0),
    default=0,
    help="Then keep only the K most likely characters (0: all).",
)
@click.option(
    "--top-p",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=1.0,
    help="Then keep the fewest most likely characters whose probability reaches P (nucleus; 1: all).",
)
@click.option("-p", "--prime", default="", help="Text to start from; printed first.")
@click.option(
    "--prime-file",
    help="One prime per line (- for standard input): one completion per prime, in order, each on its own line.",
)
@click.option("--stop", help="End a sample once it has generated this text (printed); -n stays the upper bound.")
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed; the same seed gives the same text.")
@click.option(
    "--num-samples",
    type=click.IntRange(min=1),
    default=1,
    help="Independent samples, generated together; separated by blank lines.",
)
def sample(
    lm: LanguageModel,
    length: int,
    temperature: float,
    top_k: int,
    top_p: float,
    prime: str,
    prime_file: str | None,
    stop: str | None,
    greedy: bool,
    seed: int | None,
    num_samples: int,
) -> None:
    """Generate text from a trained model to standard output."""
    if prime_file is not None and (prime or num_samples > 1):
        raise click.UsageError("--prime-file takes the place of --prime and --num-samples")
    out = Stdout()
    sampling = Sampling(temperature, top_k, top_p, greedy)
    if prime_file is not None:
        primes = [line for line, _ in source_records(sources_from_args([prime_file]), "line")]
        for prime_text, text in zip(primes, lm.samples(primes, length, sampling, seed, stop), strict=True):
            out.write_all(pieces(prime_text))
            out.write(text, "" if text.endswith("\n") else "\n")  # one line per prime
            out.flush()
    elif num_samples == 1:
        chars = lm.stream(prime, length, sampling, seed, stop)
        out.write(prime)
        for char in chars:
            out.write(char)
            if out.interactive and char == "\n":
                out.flush()  # a person watching sees each line as it is generated
    else:
        for i, text in enumerate(lm.samples([prime] * num_samples, length, sampling, seed, stop)):
            out.write(("\n\n" if i else "") + prime + text)
    out.flush()


@cli.command()
@click.argument("files", nargs=-1)
@model_option
@click.option(
    "--by",
    type=click.Choice(UNITS),
    default="line",
    help="What a record is: a line, a paragraph (blank-line separated) or a whole file.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record instead of tab-separated fields.")
def score(files: tuple[str, ...], lm: LanguageModel, by: str, as_json: bool) -> None:
    """Score each record of FILES (or - / nothing: standard input) on its own, in input order.

    Prints `nats_per_char<TAB>chars<TAB>record` per record (tab, newline, CR and backslash in
    the record escaped as \\t \\n \\r \\\\), or with --json {"loss", "bpc", "chars", "unknown",
    "text"} (and "file" with --by file). A record with characters the model never saw scores
    inf (null in JSON); an empty one nan (null).
    """
    out = Stdout()
    unknown = 0
    for result in lm.score_sources(sources_from_args(files or ("-",)), by):
        out.write_all(result.json_pieces() if as_json else result.tsv_pieces())
        out.write("\n")
        unknown += result.unknown > 0
    out.flush()
    if unknown:
        click.echo(f"charrnn: {unknown} record(s) hold characters the model never saw (scored inf)", err=True)


DYNAMIC = DynamicSettings()


def _per_rule(index: int) -> str:
    """The rules' defaults for --dynamic-lr (0) or --decay (1), for the help."""
    return ", ".join(f"{rule} {values[index]:g}" for rule, values in RULES.items())


@cli.command("eval")
@click.argument("files", nargs=-1, required=True)
@model_option
@click.option("--json", "as_json", is_flag=True, help='One JSON object {"loss", "bpc", "perplexity", "chars"}.')
@click.option(
    "--seq-len", type=click.IntRange(min=1), default=256, help="Characters per chunk (the state carries across chunks)."
)
@click.option("--dynamic", is_flag=True, help="Also the dynamic loss: a copy of the weights adapts as it reads.")
@click.option("--rule", type=click.Choice(list(RULES)), default=DYNAMIC.rule, help="--dynamic: the update rule.")
@click.option("--dynamic-lr", type=click.FloatRange(min=0), help=f"--dynamic: learning rate  [default: {_per_rule(0)}]")
@click.option(
    "--decay",
    type=click.FloatRange(0, 1),
    help=f"--dynamic: decay toward the trained weights  [default: {_per_rule(1)}]",
)
@click.option(
    "--segment", type=click.IntRange(min=1), default=DYNAMIC.segment, help="--dynamic: characters per update."
)
def eval_(
    files: tuple[str, ...],
    lm: LanguageModel,
    as_json: bool,
    seq_len: int,
    dynamic: bool,
    rule: str,
    dynamic_lr: float | None,
    decay: float | None,
    segment: int,
) -> None:
    """Loss of a model on FILES (or - for standard input): nats/char, bits/char, perplexity.

    With --dynamic, the loss of the trained weights (static) and of a copy that takes a
    gradient step on each segment after scoring it (dynamic evaluation); --json then prints
    {"static": {...}, "dynamic": {...}, "settings": {...}}. The checkpoint is not changed.
    """
    out = Stdout()
    sources = sources_from_args(files)
    if not dynamic:
        result = lm.evaluate_sources(sources, seq_len)
        out.write(json.dumps(result.to_dict()) + "\n" if as_json else _eval_lines(result, "", 11))
    else:
        both = lm.evaluate_dynamic_sources(sources, DynamicSettings(rule, dynamic_lr, decay, segment))
        text = _eval_lines(both.static, "static ", 19) + _eval_lines(both.dynamic, "dynamic ", 19)
        out.write(json.dumps(both.to_dict()) + "\n" if as_json else text)
    out.flush()


def _eval_lines(result: EvalResult, prefix: str, width: int) -> str:
    """`charrnn eval`'s lines: loss, bpc, perplexity, chars, each label `prefix`ed and padded."""
    values = [f"{result.loss:.4f} nats/char", f"{result.bpc:.4f}", f"{result.perplexity:.4f}", str(result.chars)]
    labels = ["loss", "bpc", "perplexity", "chars"]
    return "".join(f"{prefix + label:<{width}} {value}\n" for label, value in zip(labels, values, strict=True))


EXPORTERS = {".safetensors": export_safetensors, ".onnx": export_onnx}


def _export_target(ctx: click.Context, param: click.Parameter, out: Path) -> Path:
    if out.suffix not in EXPORTERS:
        raise click.BadParameter(f"must end in {' or '.join(EXPORTERS)}, got {out.name!r}", ctx, param)
    return out


@cli.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path), callback=_export_target)
@model_option
def export(out: Path, lm: LanguageModel) -> None:
    """Write the model to OUT: PyTorch's nn.RNN/LSTM/GRU + nn.Linear state dict as OUT.safetensors,
    or an ONNX graph as OUT.onnx (needs the 'export' extra)."""
    EXPORTERS[out.suffix](lm, out)
    s = lm.shape
    click.echo(f"wrote {out}: {s.cell} {s.num_layers}x{s.hidden_size}, vocab {s.vocab_size}", err=True)


@cli.command("import")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@run_dir_option(required=True, help="New run directory.")
@click.option(
    "--vocab",
    "vocab_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON list of the characters in id order, for a file without charrnn's metadata.",
)
def import_(source: Path, run_dir: Path, vocab_file: Path | None) -> None:
    """Make a run directory from SOURCE.safetensors, a PyTorch nn.RNN/LSTM/GRU ('rnn.*') + nn.Linear
    ('fc.*') state dict; then sample, eval and train work on it (needs the 'export' extra)."""
    shape = import_safetensors(source, run_dir, vocab_file)
    click.echo(
        f"imported {shape.cell} {shape.num_layers}x{shape.hidden_size}, vocab {shape.vocab_size} into {run_dir}",
        err=True,
    )


def _limit(default: int, help: str) -> dict[str, Any]:
    """A serve limit's option settings: a positive integer with its default."""
    return {"type": click.IntRange(min=1), "default": default, "help": help}


@cli.command()
@model_path_option
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port (0: any free one).")
@click.option(
    "--api-key",
    envvar="CHARRNN_API_KEY",
    help="Require Authorization: Bearer KEY (all but the page and a bare /health)  [env: CHARRNN_API_KEY]",
)
@click.option("--max-tokens", **_limit(Limits.max_tokens, "Most characters a choice may ask for."))
@click.option("--max-n", **_limit(Limits.max_n, "Most choices per prompt."))
@click.option("--max-choices", **_limit(Limits.max_choices, "Most choices per request (prompts x n)."))
@click.option("--max-streams", **_limit(Limits.max_streams, "Most choices in flight in the server; past that a 429."))
@click.option("--max-body", **_limit(Limits.max_body, "Largest request body, in bytes."))
@click.option(
    "--max-connections",
    **_limit(
        ConnectionLimits.max_connections, "Most open connections; past that the slowest to send its headers is closed."
    ),
)
@click.option(
    "--client-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=ConnectionLimits.header_timeout,
    help="Seconds a client has to send a request's headers, and again its body.",
)
def serve(
    run: str,
    host: str,
    port: int,
    api_key: str | None,
    max_tokens: int,
    max_n: int,
    max_choices: int,
    max_streams: int,
    max_body: int,
    max_connections: int,
    client_timeout: float,
) -> None:
    """Serve a model over OpenAI's completions API, reloading it when training replaces its
    checkpoint (needs the 'serve' extra). Stops cleanly on SIGTERM or Ctrl-C."""
    limits = Limits(max_tokens, max_n, max_choices, max_body, client_timeout, max_streams)
    serve_run(run, host, port, api_key_from(api_key), limits, ConnectionLimits(max_connections, client_timeout))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG, SVG or PDF  [default: <first run>/loss.png]",
)
@click.option(
    "--x", "axis", type=click.Choice(["steps", "chars", "minutes"]), default="steps", help="The horizontal axis."
)
@click.option(
    "--ylim",
    type=(float, float),
    metavar="LOW HIGH",
    help="The loss range shown  [default: the lowest loss to the highest validation loss]",
)
def plot(run_dirs: tuple[Path, ...], out: Path | None, axis: str, ylim: tuple[float, float] | None) -> None:
    """Plot training and validation loss of one or more RUN_DIRS (needs the 'plot' extra)."""
    target = out or run_dirs[0] / "loss.png"
    plot_runs(list(run_dirs), target, axis, ylim)
    click.echo(f"wrote {target}", err=True)


@cli.command()
@click.argument("root", default="runs", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run.")
def runs(root: Path, as_json: bool) -> None:
    """List the run directories under ROOT, newest first: model, steps, losses, speed, state."""
    out = Stdout()
    rows = list_runs(root)
    if as_json:
        out.write_all(json.dumps(row.to_dict()) + "\n" for row in rows)
    elif rows:
        out.write(format_table(rows), "\n")
    else:
        click.echo(f"no runs under {root}/", err=True)
    out.flush()


@cli.command()
@click.argument("files", nargs=-1, required=True)
@model_option
@click.option(
    "-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The HTML page to write."
)
@click.option(
    "--chars",
    type=click.IntRange(min=1, max=MAX_VIZ_CHARS),
    default=5000,
    help=f"Read only the first N characters of the text (at most {MAX_VIZ_CHARS:,}).",
)
def viz(files: tuple[str, ...], lm: LanguageModel, out: Path, chars: int) -> None:
    """Write one self-contained HTML page that shows the model reading FILES (or -): its surprise
    at each character, every hidden unit, and the units that track features of the text."""
    text = head(sources_from_args(files), chars)
    if not text:
        raise click.UsageError("the text is empty")
    write_page(lm, text, out)
    click.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(text):,} characters)", err=True)


_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _error(message: str) -> None:
    """One line on stderr, whatever the message holds (a file name with a newline, say)."""
    click.echo(f"charrnn: error: {message.translate(_CONTROL)}", err=True)


def run(argv: list[str] | None = None) -> int:
    """Run the command line; every user error becomes one line on stderr and an exit code."""
    try:
        return cli.main(args=argv, prog_name="charrnn", standalone_mode=False) or 0
    except click.UsageError as err:
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        _error(f"{err.format_message()}{where}")
        return err.exit_code
    except click.ClickException as err:
        _error(err.format_message())
        return err.exit_code
    except SignalError as err:  # a clean stop, not an error; under torchrun, rank 0 says it
        if World.current().is_main:
            click.echo(f"charrnn: {str(err).translate(_CONTROL)}", err=True)
        return err.exit_code
    except CharRNNError as err:
        if isinstance(err, OutputError):
            _discard_stdout()
        world = World.current()
        _error(str(err) if world.is_main else f"(rank {world.rank}) {err}")
        return err.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("charrnn: interrupted", err=True)
        return 130
    except (PipeClosed, BrokenPipeError):
        _discard_stdout()
        return 141
    except MemoryError:
        _error("out of memory; try a smaller model or batch")
        return 1
    except ValueError as err:
        if "null byte" not in str(err):  # the OS cannot take such a path; anything else is a bug
            raise
        _error("a file name contains a NUL byte")
        return 2


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit cannot fail a second time."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main() -> None:
    sys.exit(run())
