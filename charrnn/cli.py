"""The `charrnn` command: parse, call the library, print. Data to stdout, talk to stderr."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from charrnn import __version__, checkpoint
from charrnn.config import Config, load_yaml, parse_override
from charrnn.data import read_text, sources_from_args
from charrnn.errors import CharRNNError
from charrnn.evaluate import evaluate
from charrnn.sample import generate
from charrnn.train import train as train_run

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):
    """`90s`, `10m`, `2h`, `1.5h` or plain seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", str(value))
        if not match or float(match.group(1)) <= 0:
            self.fail(f"{value!r} is not a duration such as 90s, 10m or 2h", param, ctx)
        return float(match.group(1)) * _UNITS[match.group(2)]


def _default_run_dir(corpus: tuple[str, ...]) -> Path:
    name = "stdin" if corpus[0] == "-" else Path(corpus[0]).stem or "run"
    return Path("runs") / name


def _load_model(model: str | None) -> checkpoint.Checkpoint:
    return checkpoint.load(checkpoint.find_model(model))


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


@cli.command(epilog=_config_keys_help())
@click.argument("corpus", nargs=-1, required=True)
@click.option(
    "-c", "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="YAML config file."
)
@click.option(
    "-s",
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. model.hidden_size=256 (repeatable).",
)
@click.option(
    "-o",
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory  [default: runs/<corpus name>]",
)
@click.option(
    "--steps", type=click.IntRange(min=0), help="Steps to run in this invocation  [default: until train.max_steps]"
)
@click.option("--time", "time_limit", type=Duration(), help="Stop cleanly after this wall time (90s, 10m, 2h).")
@click.option("--seed", type=click.IntRange(min=0), help="Shortcut for --set train.seed=N.")
@click.option("--fresh", is_flag=True, help="Start over even if the run directory has a checkpoint.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; a few plain log lines.")
def train(
    corpus: tuple[str, ...],
    config_file: Path | None,
    overrides: tuple[str, ...],
    run_dir: Path | None,
    steps: int | None,
    time_limit: float | None,
    seed: int | None,
    fresh: bool,
    quiet: bool,
) -> None:
    """Train on CORPUS files (or - for standard input), resuming the run directory's checkpoint.

    Writes config.yaml, latest.npz, best.npz and metrics.jsonl into the run directory.
    """
    layers: list[dict[str, Any]] = [load_yaml(config_file)] if config_file else []
    layers += [parse_override(text) for text in overrides]
    if seed is not None:
        layers.append({"train": {"seed": seed}})
    sources = sources_from_args(corpus)
    train_run(
        sources,
        run_dir or _default_run_dir(corpus),
        layers,
        steps=steps,
        time_limit=time_limit,
        fresh=fresh,
        progress_bar=False if quiet else None,
    )


@cli.command()
@click.option("-m", "--model", help="Run directory or .npz  [default: the most recent run under runs/]")
@click.option("-n", "--len", "length", type=click.IntRange(min=0), default=200, help="Characters to generate.")
@click.option(
    "-t",
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    help="Softmax temperature (> 0); lower is more conservative.",
)
@click.option(
    "-k",
    "--top-k",
    type=click.IntRange(min=0),
    default=0,
    help="Sample only from the K most likely characters (0: all).",
)
@click.option("-p", "--prime", default="", help="Text to start from; printed first.")
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed; the same seed gives the same text.")
@click.option(
    "--num-samples",
    type=click.IntRange(min=1),
    default=1,
    help="Independent samples, generated together; separated by blank lines.",
)
def sample(
    model: str | None,
    length: int,
    temperature: float,
    top_k: int,
    prime: str,
    greedy: bool,
    seed: int | None,
    num_samples: int,
) -> None:
    """Generate text from a trained model to standard output."""
    ckpt = _load_model(model)
    vocab = ckpt.vocab
    steps = generate(
        ckpt.model(), vocab, length, np.random.default_rng(seed), prime, temperature, top_k, greedy, num_samples
    )
    out = sys.stdout.buffer
    if num_samples == 1:
        out.write(prime.encode("utf-8", "surrogateescape"))
        interactive = out.isatty()
        for ids in steps:
            char = vocab.chars[ids[0]]
            out.write(char.encode())
            if interactive and char == "\n":
                out.flush()  # a person watching sees each line as it is generated
    else:
        columns = np.stack(list(steps), axis=1) if length else np.zeros((num_samples, 0), int)
        out.write("\n\n".join(prime + vocab.decode(row) for row in columns).encode("utf-8", "surrogateescape"))
    out.flush()


@cli.command("eval")
@click.argument("files", nargs=-1, required=True)
@click.option("-m", "--model", help="Run directory or .npz  [default: the most recent run under runs/]")
@click.option("--json", "as_json", is_flag=True, help='One JSON object {"loss", "bpc", "perplexity", "chars"}.')
@click.option(
    "--seq-len", type=click.IntRange(min=1), default=256, help="Characters per chunk (the state carries across chunks)."
)
def eval_(files: tuple[str, ...], model: str | None, as_json: bool, seq_len: int) -> None:
    """Loss of a model on FILES (or - for standard input): nats/char, bits/char, perplexity."""
    ckpt = _load_model(model)
    text = read_text(sources_from_args(files))
    result = evaluate(ckpt.model(), ckpt.vocab.encode(text), streams=1, seq_len=seq_len)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(
            f"loss        {result.loss:.4f} nats/char\nbpc         {result.bpc:.4f}\n"
            f"perplexity  {result.perplexity:.4f}\nchars       {result.chars}"
        )


def run(argv: list[str] | None = None) -> int:
    """Run the command line; every user error becomes one line on stderr and an exit code."""
    try:
        return cli.main(args=argv, prog_name="charrnn", standalone_mode=False) or 0
    except click.UsageError as err:
        where = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        click.echo(f"charrnn: error: {err.format_message()}{where}", err=True)
        return err.exit_code
    except click.ClickException as err:
        click.echo(f"charrnn: error: {err.format_message()}", err=True)
        return err.exit_code
    except CharRNNError as err:
        click.echo(f"charrnn: error: {err}", err=True)
        return err.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("charrnn: interrupted", err=True)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except MemoryError:
        click.echo("charrnn: error: out of memory; try a smaller model or batch", err=True)
        return 1


def main() -> None:
    sys.exit(run())
