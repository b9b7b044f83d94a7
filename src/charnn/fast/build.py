"""The compiled kernels (csrc/), built on first use and cached: the int8 generation step and
sampler (gru_int8.cpp, `load_generation()`, used by charnn.fast.step) and the fused gates of
GRU training (gru_train.cpp, `load_training()`, used by charnn.fast.recurrence).

Each is compiled with PyTorch's extension builder (g++ and ninja) into charnn's cache
(CHARNN_CACHE, else ~/.cache/charnn), once per distinct build: its sources, flags, PyTorch
version and install folder, and Python's headers name the folder, so two environments never
undo each other's build. A loader returns the module, or None where it cannot run here (a CPU
without AVX-512, or without VNNI for int8; no compiler; a failed build; CHARNN_KERNELS=0 in
the environment), and callers then use PyTorch's own operations. CHARNN_AMX=0 keeps the int8
kernel on VNNI for every row.

A build runs in a child process (`python -m charnn.fast.build --build NAME`) that shares an OS
lock with its parent while it compiles into a private folder, then renames that into place:
a build killed at any moment leaves no lock and no half-built kernel. A caller waits (for its
own build, or for another process's) at most CHARNN_KERNEL_WAIT seconds (default 180); past
that it goes on with PyTorch's operations while the build finishes in the background, ready
for the next run. `python -m charnn.fast.build` builds both (scripts/setup.sh).
"""

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from charnn import atomic
from charnn.data.corpus import cache_dir
from charnn.hardware import cpu_flags
from charnn.locks import Lock

CSRC = Path(__file__).parent / "csrc"
UNITS = 16  # hidden units per block of the kernels: hidden sizes must be a multiple of it
# AVX-512 with FMA; no contraction, so every path rounds alike.
_BASE_FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-ffp-contract=off")
# For the training kernel's at::parallel_for to run in parallel (with PyTorch's own OpenMP runtime),
# where the compiler has it (`_flags`). The int8 kernel has threads of its own and needs none.
_OPENMP = "-fopenmp"
_AVX512 = {"avx512f", "avx512bw", "avx512vl", "fma"}
BUILD_LIMIT = 900  # seconds: a build still running then is stopped (a compiler that hangs)


@dataclass(frozen=True)
class Kernel:
    name: str  # the Python module it builds
    source: str  # in csrc/
    flags: tuple[str, ...]
    what: str  # for messages


GENERATION = Kernel("charnn_gru_int8", "gru_int8.cpp", (*_BASE_FLAGS, "-mavx512vnni", "-mamx-tile", "-mamx-int8"),
                    "the int8 generation kernel")  # fmt: skip
TRAINING = Kernel("charnn_gru_train", "gru_train.cpp", (*_BASE_FLAGS, _OPENMP), "the GRU training kernel")
KERNELS = {kernel.name: kernel for kernel in (GENERATION, TRAINING)}


# How much slower PyTorch's operations are than each kernel: measured on this project's 2-core AMD
# EPYC with CHARNN_KERNELS=0, alternating with the default in one session (issue 29).
_WITHOUT = {GENERATION.name: "one-stream generation about 5-7 times slower than with it",
            TRAINING.name: "training about 1.2-2 times slower than with it"}  # fmt: skip


def cpu_supports_generation() -> bool:
    """The int8 generation kernel needs AVX-512 with VNNI (AMX is used where present)."""
    return _AVX512 | {"avx512_vnni"} <= cpu_flags()


def cpu_supports_training() -> bool:
    """The training kernel needs AVX-512 only."""
    return _AVX512 <= cpu_flags()


def _wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CHARNN_KERNEL_WAIT", 180)))
    except ValueError:
        return 180.0


def build_folder(kernel: Kernel) -> Path:
    """The cache folder of one distinct build of `kernel`."""
    texts = [(CSRC / kernel.source).read_text(), (CSRC / "simd.h").read_text(), *kernel.flags, torch.__version__,
             str(Path(torch.__file__).parent), sysconfig.get_paths()["include"]]  # fmt: skip
    return cache_dir() / "kernels" / hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def _library(kernel: Kernel) -> Path:
    return build_folder(kernel) / f"{kernel.name}.so"


def _note(kernel: Kernel, why: str) -> None:
    print(f"charnn: note: {kernel.what} {why}; using PyTorch's operations instead ({_WITHOUT[kernel.name]})",
          file=sys.stderr)  # fmt: skip


@functools.cache
def note_unavailable(kernel: Kernel) -> bool:
    """Whether `kernel` cannot run here at all (switched off, or a CPU without what it needs); where
    so, one note per process says which path runs instead and how much slower to expect."""
    if _switched_off():
        why = "CHARNN_KERNELS=0 switches the compiled kernels off"
    elif not (cpu_supports_generation() if kernel is GENERATION else cpu_supports_training()):
        why = f"this CPU lacks {'AVX-512 with VNNI' if kernel is GENERATION else 'AVX-512'}"
    else:
        return False
    print(f"charnn: note: {why}, so {kernel.what} does not run here: PyTorch's operations do, "
          f"{_WITHOUT[kernel.name]}", file=sys.stderr)  # fmt: skip
    return True


def _load(kernel: Kernel):
    """The built module of `kernel`, building it first if needed; None, after one note, where that fails."""
    library = _library(kernel)
    if not library.is_file() and not _build_in_child(kernel):
        return None
    try:
        spec = importlib.util.spec_from_file_location(kernel.name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as error:
        _note(kernel, f"could not be loaded ({str(error).splitlines()[0][:200]})")
        return None
    return module


def _build_in_child(kernel: Kernel) -> bool:
    """Build `kernel` in a child process under the build lock, waiting at most CHARNN_KERNEL_WAIT seconds."""
    folder = build_folder(kernel)
    folder.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _wait_seconds()
    lock = Lock(folder.with_name(folder.name + ".lock"))
    if not lock.acquire():
        print(f"charnn: waiting for another process that is compiling {kernel.what}...", file=sys.stderr)
        if not lock.acquire(wait=max(0.0, deadline - time.monotonic())):
            _note(kernel, "is still being compiled by another process")
            return False
    try:
        if _library(kernel).is_file():  # built by the process we waited for
            return True
        # The child shares the lock (the same open file): killed, it lets go; the lock outlives
        # this process when the child goes on alone.
        child = subprocess.Popen([sys.executable, "-m", "charnn.fast.build", "--build", kernel.name],
                                 pass_fds=(lock.fd,), start_new_session=True)  # fmt: skip
        try:
            return child.wait(timeout=max(0.0, deadline - time.monotonic())) == 0  # on failure the child said why
        except subprocess.TimeoutExpired:
            # Not stopped: it finishes in the background, and the next run finds the kernel ready.
            _note(kernel, "is still being compiled (in the background)")
            return False
    finally:
        lock.release()


def _build(kernel: Kernel) -> int:
    """Compile `kernel` into the cache (in the child process, holding the build lock); exit status."""
    folder = build_folder(kernel)
    # Nobody else is building while we hold the lock: private folders left by killed builds are stale.
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    print(f"charnn: compiling {kernel.what} (once; under a minute)...", file=sys.stderr)
    # A build that hangs must not hold the lock forever: this process and ninja go (a compiler
    # ninja started is in a process group of its own, and finishes its one file alone).
    signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
    signal.alarm(BUILD_LIMIT)
    try:
        from torch.utils.cpp_extension import load as build

        # The builder logs a screenful about an unexpected compiler; the note below says enough.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # Built in private, then renamed into place (replacing an old folder without a library in it).
        with atomic.replacing_folder(folder) as private:
            build(kernel.name, [str(CSRC / kernel.source)], extra_cflags=_flags(kernel),
                  build_directory=str(private), is_python_module=True)  # fmt: skip
    except Exception as error:  # no compiler, no ninja, a failed build: the slower path still works
        lines = [line.strip() for line in str(error).splitlines()]
        reason = next((line for line in lines if "error:" in line.lower() or "not found" in line), "")
        _note(kernel, f"could not be built ({reason[:200] or type(error).__name__})")
        return 1
    return 0


def _flags(kernel: Kernel) -> list[str]:
    """`kernel`'s flags, less OpenMP's where the compiler has none (Apple's clang): without it,
    at::parallel_for runs its whole loop in the calling thread, so the kernel builds and runs on one thread."""
    if _OPENMP not in kernel.flags or _compiles(_OPENMP) or not _compiles():  # no compiler at all: the build says
        return list(kernel.flags)
    print(f"charnn: note: the C++ compiler has no OpenMP: {kernel.what} is built without it and runs its loops on "
          "one thread", file=sys.stderr)  # fmt: skip
    return [flag for flag in kernel.flags if flag != _OPENMP]


def _compiles(*flags: str) -> bool:
    """Whether the compiler PyTorch's builder runs ($CXX, else c++) builds a program with `flags`
    (with -fopenmp, one that calls OpenMP, so that its header and library are checked too)."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.cpp"
        body = "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
        source.write_text(body if _OPENMP in flags else "int main() { return 0; }\n")
        command = [os.environ.get("CXX", "c++"), *flags, str(source), "-o", str(Path(folder) / "probe")]
        try:
            return subprocess.run(command, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


def _switched_off() -> bool:
    return os.environ.get("CHARNN_KERNELS", "1") == "0"


@functools.cache
def load_generation():
    """The int8 generation kernel (csrc/gru_int8.cpp), or None where it cannot be built or run here."""
    if note_unavailable(GENERATION):
        return None
    module = _load(GENERATION)
    if module is not None and os.environ.get("CHARNN_AMX", "1") != "0":
        module.enable_tiles()
    return module


@functools.cache
def load_training():
    """The GRU training kernel (csrc/gru_train.cpp), or None where it cannot be built or run here."""
    if note_unavailable(TRAINING):
        return None
    return _load(TRAINING)


def build_now() -> int:
    """Build (or find) the kernels; exit status for scripts/setup.sh (0: a failed build is not fatal)."""
    for what, supported, loader in (
        ("int8 generation", cpu_supports_generation, load_generation),
        ("training", cpu_supports_training, load_training),
    ):
        if not supported():
            print(f"charnn: this CPU lacks what the {what} kernel needs: PyTorch's operations are used")
        else:
            print(f"charnn: {what} kernel " + ("ready" if loader() is not None else "NOT built (see the note above)"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build":
        sys.exit(_build(KERNELS[sys.argv[2]]))
    sys.exit(build_now())
