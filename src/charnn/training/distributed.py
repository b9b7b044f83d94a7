"""Training across processes and machines with PyTorch's own engine: torchrun and DDP.

torchrun starts one process per GPU (or per share of the CPU cores) on each machine and tells
each where it stands through the environment (RANK, WORLD_SIZE, LOCAL_RANK). On GPUs the
trainer wraps its model in DistributedDataParallel (gradients averaged over nccl); on CPUs it
averages the gradients itself after each backward (`average_gradients`, one all-reduce over
gloo), so every process can run the hand-written recurrence (charnn.fast.recurrence), whose
forward DDP cannot see. It gives every process its own rows of each batch, and lets only rank 0
write checkpoints, metrics and progress. Small decisions (the loss to log, when to stop) travel
over a gloo group.

    torchrun --standalone --nproc-per-node 2 -m charnn train data/enwik8 --out runs/e8
    charnn train data/enwik8 --out runs/e8 --nproc 2      # the same: charnn starts torchrun

One process without torchrun is the plain path: every helper here then does nothing.
"""

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from charnn.errors import DistributedError

# A collective that waits longer than this is a hang (a process died without closing its
# connections); the slowest legitimate wait is rank 0 writing a checkpoint.
TIMEOUT = timedelta(minutes=10)
# Why a run stops, as numbers every process can agree on (the largest wins).
STOP_REASONS = (None, "max_steps", "patience", "time_limit", "stopped", "SIGHUP", "SIGTERM", "SIGINT")
# Each process draws its own dropout masks: rank r > 0 reseeds with seed + r * this.
RANK_SEED_STRIDE = 1_000_003
LAUNCHED_BY_CHARNN = "CHARNN_LAUNCHER"  # set for the processes `charnn train --nproc` starts


@dataclass(frozen=True)
class Group:
    """Where this process stands: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


ONE = Group()  # a run without torchrun


def from_env() -> Group:
    """The group torchrun describes in the environment; one process when it is not there."""
    try:
        return Group(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))  # fmt: skip
    except ValueError:
        return Group()


@contextlib.contextmanager
def session(group: Group) -> Iterator[None]:
    """Join the process group for the length of a run (when there is more than one process)."""
    if not group.active or dist.is_initialized():
        yield
        return
    try:
        with _signals_kill():
            dist.init_process_group("gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as error:
        raise DistributedError(f"rank {group.rank}: cannot join the other processes ({_first_line(error)})") from None
    global _joined
    _joined = True
    try:
        yield
    except RuntimeError as error:
        # A peer that dies mid-step shows up here, from inside DDP's gradient exchange.
        if isinstance(error, DistributedError) or not _communication_failed(error):
            raise
        raise lost_contact(group, error) from None
    finally:
        dist.destroy_process_group()


# Whether this process has joined a process group (see `exit_process`).
_joined = False


def exit_process(code: int) -> None:
    """End a process that took part in a distributed run, skipping the interpreter's shutdown.

    gloo's worker threads outlive `destroy_process_group` (PyTorch stops them only when the group
    object itself goes, which it never does before exit), and a worker that drops its last finished
    collective a moment late releases Python tensors while the interpreter is shutting down:
    "terminate called without an active exception" and SIGABRT, about once in 15 runs on a loaded
    machine, after the run had finished and saved everything. Every file is closed by then, so the
    process flushes its output and leaves without that shutdown. Does nothing in a plain run.
    """
    if not _joined:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _signals_kill() -> Iterator[None]:
    """Let SIGINT and SIGTERM end the process at once while it waits for the others to join: that
    wait never returns to Python, so a handler would not run, and there is nothing to save yet."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _communication_failed(error: RuntimeError) -> bool:
    words = ("gloo", "NCCL", "Connection", "Timed out")
    return isinstance(error, dist.DistError) or any(word in str(error) for word in words)


def device_for(group: Group, device: torch.device) -> torch.device:
    """Each process on a machine takes its own GPU."""
    if group.active and device.type == "cuda":
        torch.cuda.set_device(group.local_rank)
        return torch.device("cuda", group.local_rank)
    return device


def wrap(group: Group, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model as the training step calls it: DistributedDataParallel on GPUs when there are several
    processes; on CPUs the model itself, its weights made rank 0's (as DDP would), its gradients left to
    `average_gradients`."""
    if not group.active:
        return model
    if device.type == "cuda":
        from torch.nn.parallel import DistributedDataParallel

        # Gradients go over NCCL; the default group stays gloo for the small CPU messages.
        return DistributedDataParallel(model, device_ids=[device.index], process_group=dist.new_group(backend="nccl"))
    with torch.no_grad(), _collective(group):
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        dist.broadcast(flat, src=0)
        for p, value in zip(model.parameters(), flat.split([p.numel() for p in model.parameters()]), strict=True):
            p.copy_(value.view_as(p))
    return model


def average_gradients(group: Group, network: torch.nn.Module) -> None:
    """The mean over processes of every parameter's gradient, in place: one all-reduce of all of them
    together. Does nothing where DDP averages them (GPUs) or there is one process."""
    from torch.nn.parallel import DistributedDataParallel

    if not group.active or isinstance(network, DistributedDataParallel):
        return
    parameters = list(network.parameters())
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    with _collective(group):
        dist.all_reduce(flat)
    flat /= group.world_size
    for p, value in zip(parameters, flat.split([p.numel() for p in parameters]), strict=True):
        p.grad = value.view_as(p).clone()


def _collective(group: Group):
    """Turn a peer's failure, seen as a broken connection or a timeout, into one clear error."""
    return _Collective(group)


class _Collective(contextlib.AbstractContextManager):
    def __init__(self, group: Group):
        self.group = group

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, RuntimeError) and not isinstance(error, DistributedError):
            raise lost_contact(self.group, error) from None
        return False


def lost_contact(group: Group, error: BaseException) -> DistributedError:
    return DistributedError(
        f"rank {group.rank}: lost contact with the other processes ({_first_line(error)}); "
        "another rank failed: see its message"
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def barrier(group: Group) -> None:
    if group.active:
        with _collective(group):
            dist.barrier()


def mean(group: Group, value: torch.Tensor) -> float:
    """The mean over processes of a scalar (each process's loss on its share of the batch)."""
    if not group.active:
        return value.item()
    total = value.detach().float().cpu().reshape(1)
    with _collective(group):
        dist.all_reduce(total)
    return total.item() / group.world_size


def sums(group: Group, values: list[float]) -> list[float]:
    if not group.active:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    with _collective(group):
        dist.all_reduce(total)
    return total.tolist()


def agree(group: Group, reason: str | None) -> str | None:
    """One reason to stop for every process (a signal or the clock reaches them at different steps)."""
    if not group.active:
        return reason
    code = torch.tensor([STOP_REASONS.index(reason) if reason in STOP_REASONS else STOP_REASONS.index("stopped")])
    with _collective(group):
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return STOP_REASONS[int(code)]


def gather(group: Group, value) -> list:
    """Every process's `value`, in rank order (for the random states a checkpoint keeps)."""
    if not group.active:
        return [value]
    values: list = [None] * group.world_size
    with _collective(group):
        dist.all_gather_object(values, value)
    return values


# --- errors and the launcher ------------------------------------------------------------


def record_error(message: str, kind: str) -> None:
    """Leave a rank's one-line error where torchrun's agent looks, so the launcher can name it."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    # torchrun prints py_callstack in its report of the failure: the message says more than a traceback.
    extra = {"timestamp": str(int(time.time())), "py_callstack": message, "charnn_error": kind}
    data = {"message": {"message": message, "extraInfo": extra}}
    with contextlib.suppress(OSError):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)


def launch(nproc: int, argv: list[str]) -> int:
    """`charnn ARGV` in `nproc` processes on this machine through torchrun; its exit code.

    A failed rank ends the others (torchrun's agent stops them) and is named in one line.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun's agent logs each step of its work; charnn reports the outcome itself.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ[LAUNCHED_BY_CHARNN] = "1"
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of each process taking all
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    args = torchrun.parse_args(["--standalone", f"--nproc-per-node={nproc}", "--monitor-interval=0.2",
                                "--shutdown-timeout=60", "--module", "charnn", *argv])  # fmt: skip
    try:
        torchrun.run(args)
    except ChildFailedError as error:
        print(f"charnn: error: {describe_failure(error.failures)}", file=sys.stderr)
        return 2
    except SignalException as error:
        # The agent passed the signal on; rank 0 has written a checkpoint and said how to resume.
        return {"SIGINT": 130, "SIGTERM": 143}.get(error.sigval.name, 128 + int(error.sigval))
    return 0


def describe_failure(failures: dict) -> str:
    """The failure that caused the others: a rank killed or failing on its own, not one that lost contact."""

    def secondary(failure) -> bool:
        # Losing contact is what the others see when one fails; SIGTERM is how the agent stops them.
        data = failure.error_file_data.get("message", {})
        lost = isinstance(data, dict) and data.get("extraInfo", {}).get("charnn_error") == "DistributedError"
        return lost or failure.exitcode == -signal.SIGTERM

    primary = {rank: f for rank, f in failures.items() if not secondary(f)} or failures
    rank = min(primary, key=lambda r: (primary[r].timestamp, r))
    failure = primary[rank]
    if failure.exitcode < 0:
        why = f"killed by {failure.signal_name()}"
    elif failure.error_file_data.get("message"):
        why = failure.message["message"] if isinstance(failure.message, dict) else failure.message
        why = f"exit code {failure.exitcode}: {why.removeprefix(f'rank {rank}: ')}"
    else:
        why = f"exit code {failure.exitcode} (see its traceback above)"
    return f"rank {rank} failed ({why}); the other processes were stopped"
