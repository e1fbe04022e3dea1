"""Data parallel under `torchrun`: the processes that train one run together, and what they
agree on. Without torchrun it is one process and every method costs nothing.

Each of the K processes (ranks) trains B/K of the B streams; gradients are averaged over the
ranks with `torch.distributed.all_reduce` (gloo on CPU, NCCL on CUDA) before clipping, so the
update equals one process's. Rank 0 alone holds the run's lock and writes its checkpoints,
metrics and progress; after each step every rank learns, in one collective, whether to stop
(`--time`, SIGTERM/SIGINT that torchrun forwards, any rank's) and where a time budget ends.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from charrnn.errors import CharRNNError, InvalidUsageError
from charrnn.extras import require

Method = TypeVar("Method", bound=Callable[..., Any])


def _collective(method: Method) -> Method:
    """A collective over the ranks; when it fails because another rank has gone (killed, or
    failed itself: gloo and NCCL raise a RuntimeError), one line that says so."""

    @functools.wraps(method)
    def call(self: World, *args: Any) -> Any:
        try:
            return method(self, *args)
        except RuntimeError as err:
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # gloo's "[.../pair.cc:553] " prefix
            raise CharRNNError(
                f"process {self.rank} of {self.size}: another process training with it has stopped ({first:.200})"
            ) from None

    return call  # type: ignore[return-value]


@dataclass
class World:
    """This process's place among those training together: rank `rank` of `size`; `device` is
    the GPU torchrun's LOCAL_RANK gives it (None: the config's `train.device`)."""

    rank: int = 0
    size: int = 1
    device: Any = None
    _current: ClassVar[World]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def launched() -> bool:
        """Whether torchrun started this process as one of several."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    @classmethod
    def join(cls, device: str) -> World:
        """Join torchrun's process group: NCCL when the ranks train on CUDA, else gloo."""
        torch = require("torch", "torch")
        dist = torch.distributed
        cuda = device != "cpu" and device != "mps" and torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        gpu = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else None
        if gpu is not None:
            torch.cuda.set_device(gpu)
        world = cls(dist.get_rank(), dist.get_world_size(), gpu)
        World._current = world
        return world

    @staticmethod
    def current() -> World:
        return World._current

    def leave(self) -> None:
        """Leave the process group (the rank stays known, for the messages that follow)."""
        if self.size > 1 and require("torch", "torch").distributed.is_initialized():
            with contextlib.suppress(RuntimeError):  # a group whose peer has gone
                require("torch", "torch").distributed.destroy_process_group()

    def streams(self, batch: int) -> slice:
        """This rank's streams of a batch of `batch`."""
        if batch % self.size:
            raise InvalidUsageError(f"train.batch_size={batch} does not divide among {self.size} processes")
        share = batch // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    @_collective
    def average(self, tensors: list[Any]) -> None:
        """Each tensor replaced, in place, by its mean over the ranks."""
        if self.size > 1:
            dist = require("torch", "torch").distributed
            for tensor in tensors:
                dist.all_reduce(tensor)
                tensor.div_(self.size)

    def mean(self, scalar: Any) -> Any:
        self.average([scalar])
        return scalar

    @_collective
    def gather_streams(self, carry: Any) -> Any:
        """Every rank's streams of a carried state (L, S, B/K, H), in rank order: (L, S, B, H)."""
        if self.size == 1:
            return carry
        torch = require("torch", "torch")
        parts = [torch.empty_like(carry) for _ in range(self.size)]
        torch.distributed.all_gather(parts, carry.contiguous())
        return torch.cat(parts, dim=2)

    @_collective
    def agree(self, values: list[int]) -> list[int]:
        """The largest of each value over the ranks (one collective): flags, and numbers only
        rank 0 sets (the others pass -1)."""
        if self.size == 1:
            return values
        torch = require("torch", "torch")
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.tolist()

    @_collective
    def barrier(self) -> None:
        if self.size > 1:
            require("torch", "torch").distributed.barrier()


World._current = World()
