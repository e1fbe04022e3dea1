"""`charrnn serve` under the attacks of issue 39 and under 200 clients at once: how fast
`/health` and a 1-character completion answer meanwhile, what the attack itself got, and the
server's memory (RSS) before, at its peak and after, and its open file descriptors.

    python benchmarks/serve_attacks.py [--clients 200] [--slow 1200] [--seconds 15]

The default model (GRU 2x256, trained 20 steps on tinyshakespeare: its size is what counts),
`charrnn serve` with its default limits, and the clients on the same machine (they share its
cores with the server). Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from serve_load import CHARRNN, CORPUS, start_server

ONE_CHAR = {"prompt": "ROMEO:", "max_tokens": 1}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Probe(threading.Thread):
    """Meanwhile: GET /health every 50 ms and a 1-character completion every 200 ms, each on a
    new connection, with the server's RSS and open descriptors."""

    def __init__(self, address: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.address, self.pid = address, pid
        self.health: list[float] = []
        self.complete: list[float] = []
        self.failures = 0
        self.rss: list[float] = []
        self.fds: list[int] = []
        self.stopping = threading.Event()

    def _timed(self, call: Callable[[], httpx.Response]) -> float | None:
        started = time.perf_counter()
        try:
            ok = call().status_code == 200
        except httpx.HTTPError:
            ok = False
        self.failures += not ok
        return time.perf_counter() - started if ok else None

    def run(self) -> None:
        tick = 0
        while not self.stopping.is_set():
            seconds = self._timed(lambda: httpx.get(f"{self.address}/health", timeout=30))
            if seconds is not None:
                self.health.append(seconds)
            if tick % 4 == 0:
                seconds = self._timed(lambda: httpx.post(f"{self.address}/v1/completions", json=ONE_CHAR, timeout=60))
                if seconds is not None:
                    self.complete.append(seconds)
            self.rss.append(rss_mib(self.pid))
            self.fds.append(len(os.listdir(f"/proc/{self.pid}/fd")))
            tick += 1
            self.stopping.wait(0.05)


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))] * 1000:.0f}"


def attack_fan_out(address: str, opts: argparse.Namespace) -> str:
    reply = httpx.post(f"{address}/v1/completions", json={"prompt": ["a"] * 2000, "n": 64, "max_tokens": 1})
    return f"{reply.status_code} {reply.json()['error']['code']}"


def attack_echo(address: str, opts: argparse.Namespace) -> str:
    prompt = CORPUS.read_text()[:16_000]
    body = {"prompt": prompt, "echo": True, "logprobs": 20, "max_tokens": 1, "n": 4}
    started = time.perf_counter()
    reply = httpx.post(f"{address}/v1/completions", json=body, timeout=300)
    return f"{reply.status_code}, {len(reply.content) / 2**20:.0f} MB in {time.perf_counter() - started:.1f} s"


def attack_long_prompt(address: str, opts: argparse.Namespace) -> str:
    text = CORPUS.read_text()
    prompt = text[: 1_000_000 - 40_000]
    while len(json.dumps({"prompt": prompt, "max_tokens": 1})) > 1 << 20:
        prompt = prompt[:-10_000]
    started = time.perf_counter()
    reply = httpx.post(f"{address}/v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=600)
    return f"{reply.status_code}, {len(prompt):,} chars fed in {time.perf_counter() - started:.1f} s"


def attack_slow(address: str, opts: argparse.Namespace) -> str:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    socks, refused = [], 0
    for i in range(opts.slow):
        try:
            sock = socket.create_connection((host, int(port)), timeout=10)
            if i % 20 == 0:  # a body that never comes
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
            else:
                sock.sendall(b"POST /v1/completions HTTP/1.1\r\n")
            socks.append(sock)
        except OSError:
            refused += 1
    deadline = time.monotonic() + opts.seconds
    while time.monotonic() < deadline:  # a header byte every 5 s, from those still open
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
        time.sleep(5)
    closed = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            closed += sock.recv(1024) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        sock.close()
    return f"{len(socks)} opened ({refused} refused), {closed} closed by the server"


def attack_clients(address: str, opts: argparse.Namespace) -> str:
    """`--clients` at once for `--seconds`: a third streaming 200 characters, a third not, a
    third that start streaming and leave after the first event."""
    deadline = time.monotonic() + opts.seconds
    counts = {"done": 0, "failed": 0}

    def client(i: int) -> None:
        http = httpx.Client(timeout=120)
        while time.monotonic() < deadline:
            body = {"prompt": "ROMEO:", "max_tokens": 200, "seed": i, "stream": i % 3 != 1}
            try:
                if i % 3 == 1:
                    ok = http.post(f"{address}/v1/completions", json=body).status_code == 200
                else:
                    with http.stream("POST", f"{address}/v1/completions", json=body) as reply:
                        ok = reply.status_code == 200
                        for n, _ in enumerate(reply.iter_lines()):
                            if i % 3 == 2 and n == 1:
                                break
            except httpx.HTTPError:
                ok = False
            counts["done" if ok else "failed"] += 1
        http.close()

    with ThreadPoolExecutor(opts.clients) as pool:
        list(pool.map(client, range(opts.clients)))
    return f"{counts['done']} requests answered, {counts['failed']} failed"


ATTACKS = {
    "`prompt: ['a'] * 2000, n: 64, max_tokens: 1` (10 KB, 128,000 choices)": attack_fan_out,
    "`echo`, `logprobs: 20` on a 16,000-character prompt, `n: 4`": attack_echo,
    "a prompt of the 1 MiB body limit": attack_long_prompt,
    "slow clients: 1,200 connections sending a header byte every 5 s (1 in 20 a body that never comes)": attack_slow,
    "200 clients at once: streaming, not streaming, leaving after the first event": attack_clients,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--slow", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=15)
    opts = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # this process opens the slow sockets
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        subprocess.run([*CHARRNN, "train", str(CORPUS), "-o", str(run), "--steps", "20", "-q"], check=True)
        for name, attack in ATTACKS.items():
            server, address = start_server(run)
            httpx.post(f"{address}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 50})  # warm up
            time.sleep(1)
            before = rss_mib(server.pid)
            probe = Probe(address, server.pid)
            probe.start()
            got = attack(address, opts)
            probe.stopping.set()
            probe.join()
            time.sleep(3)
            after = rss_mib(server.pid)
            peak = max(probe.rss, default=after)
            server.terminate()
            err = server.communicate(timeout=60)[1]
            tracebacks = err.count("Traceback")
            health = f"{pct(probe.health, 0.5)} / {pct(probe.health, 0.99)} / {max(probe.health, default=0) * 1000:.0f}"
            completion = f"{pct(probe.complete, 0.5)} / {pct(probe.complete, 0.99)}"
            memory = f"{before:.0f} / {peak:.0f} / {after:.0f}"
            fds = max(probe.fds, default=0)
            rows.append(
                f"| {name} | {got} | {health} | {completion} | {probe.failures} | {memory} | {fds} | {tracebacks} |"
            )
            print(rows[-1], flush=True)
    print(
        "| attack | what it got | /health p50 / p99 / max (ms) | 1-char completion p50 / p99 (ms) | probes failed | "
        "RSS before / peak / after (MiB) | open fds, peak | tracebacks |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
