"""The compiled kernels (csrc/), built on first use and cached: the int8 generation step and
sampler (gru_int8.cpp, `load_generation()`, used by charnn.fast.step) and the fused gates of
GRU training (gru_train.cpp, `load_training()`, used by charnn.fast.recurrence).

Both are built for the first instruction set of ISAS that the CPU runs: AVX-512 (with VNNI for
int8, and AMX where present), AVX2 with FMA, or ARM NEON (with the dot product instructions where
present); the cores (int8_core.h, train_core.h) are plain C++ over csrc/simd.h's vectors.
CHARNN_ISA=avx2 (or another) asks for one instruction set, to test a path this CPU would not pick.

Each is compiled with PyTorch's extension builder (g++ and ninja) into charnn's cache
(CHARNN_CACHE, else ~/.cache/charnn), once per distinct build: its sources, flags, PyTorch
version and install folder, and Python's headers name the folder, so two environments never
undo each other's build. A loader returns the module, or None where it cannot run here (a CPU
with none of those instruction sets; no compiler; a failed build; CHARNN_KERNELS=0 in the
environment), and callers then use PyTorch's own operations. CHARNN_AMX=0 keeps the int8
kernel off AMX.

A build runs in a child process (`python -m charnn.fast.build --build ROLE ISA`) that shares an OS
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
import platform
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
ISAS = ("avx512", "avx2", "neon")  # the kernels' instruction sets (csrc/simd.h), the first that runs here wins
# No contraction, so every path rounds alike.
_COMMON_FLAGS = ("-O3", "-ffp-contract=off")
_ISA_FLAGS = {"avx512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"), "avx2": ("-mavx2", "-mfma"), "neon": ()}
# For the training kernel's at::parallel_for to run in parallel (with PyTorch's own OpenMP runtime),
# where the compiler has it (`_flags`). The int8 kernel has threads of its own and needs none.
_OPENMP = "-fopenmp"
_AVX512 = {"avx512f", "avx512bw", "avx512vl", "fma"}
_AVX2 = {"avx2", "fma"}
BUILD_LIMIT = 900  # seconds: a build still running then is stopped (a compiler that hangs)
GENERATION, TRAINING = "generation", "training"  # the two kernels' roles
_ROLES = {GENERATION: ("gru_int8", "the int8 generation kernel"), TRAINING: ("gru_train", "the GRU training kernel")}


@dataclass(frozen=True)
class Kernel:
    name: str  # the Python module it builds
    source: str  # in csrc/
    flags: tuple[str, ...]
    what: str  # for messages
    role: str
    isa: str


@functools.cache
def kernel_for(role: str, isa: str) -> Kernel:
    """The build of `role`'s kernel for instruction set `isa`."""
    stem, what = _ROLES[role]
    flags = [*_COMMON_FLAGS, *_ISA_FLAGS[isa]]
    if role == GENERATION and isa == "avx512":
        flags += ["-mavx512vnni", "-mamx-tile", "-mamx-int8"]
    if isa == "neon" and "asimddp" in cpu_flags():  # the int8 dot product instructions (every Apple M chip)
        flags.append("-march=armv8.2-a+dotprod")
    if role == TRAINING:
        flags.append(_OPENMP)
    return Kernel(f"charnn_{stem}_{isa}", f"{stem}.cpp", tuple(flags), what, role, isa)


# How much slower PyTorch's operations are than each kernel: measured on this project's 2-core AMD
# EPYC with CHARNN_KERNELS=0, alternating with the default in one session (issue 29).
_WITHOUT = {GENERATION: "one-stream generation about 5-7 times slower than with it",
            TRAINING: "training about 1.2-2 times slower than with it"}  # fmt: skip


def runs_here(role: str, isa: str) -> bool:
    """Whether this CPU runs `role`'s kernel built for `isa` (AVX-512 generation needs VNNI too)."""
    flags = cpu_flags()
    if isa == "avx512":
        return _AVX512 | ({"avx512_vnni"} if role == GENERATION else set()) <= flags
    if isa == "avx2":
        return _AVX2 <= flags
    return isa == "neon" and platform.machine().lower() in ("aarch64", "arm64")


def _forced() -> str:
    """CHARNN_ISA: an instruction set asked for (to test a path this CPU would not pick), or ''."""
    return os.environ.get("CHARNN_ISA", "").strip().lower()


def _candidates() -> tuple[str, ...]:
    return (_forced(),) if _forced() else ISAS


def cpu_supports(role: str) -> bool:
    """Whether a build of `role`'s kernel runs on this CPU (on CHARNN_ISA's instruction set, where set)."""
    return any(isa in ISAS and runs_here(role, isa) for isa in _candidates())


def chosen_isa(role: str) -> str | None:
    """The instruction set `role`'s kernel runs on here: CHARNN_ISA's where this CPU runs it, else the
    first of ISAS it runs; None where none does, or CHARNN_KERNELS=0 switches the kernels off."""
    if _switched_off():
        return None
    return next((isa for isa in _candidates() if isa in ISAS and runs_here(role, isa)), None)


def cpu_supports_generation() -> bool:
    return cpu_supports(GENERATION)


def cpu_supports_training() -> bool:
    return cpu_supports(TRAINING)


def _wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("CHARNN_KERNEL_WAIT", 180)))
    except ValueError:
        return 180.0


def build_folder(kernel: Kernel) -> Path:
    """The cache folder of one distinct build of `kernel`."""
    headers = [path.read_text() for path in sorted(CSRC.glob("*.h"))]
    texts = [(CSRC / kernel.source).read_text(), *headers, *kernel.flags, torch.__version__,
             str(Path(torch.__file__).parent), sysconfig.get_paths()["include"]]  # fmt: skip
    return cache_dir() / "kernels" / hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def _library(kernel: Kernel) -> Path:
    return build_folder(kernel) / f"{kernel.name}.so"


def _note(kernel: Kernel, why: str) -> None:
    print(f"charnn: note: {kernel.what} {why}; using PyTorch's operations instead ({_WITHOUT[kernel.role]})",
          file=sys.stderr)  # fmt: skip


def note_unavailable(role: str) -> bool:
    """Whether `role`'s kernel cannot run here at all (switched off, or a CPU without what it needs); where
    so, one note per process says which path runs instead and how much slower to expect."""
    return _note_unavailable(role, _forced(), _switched_off())


@functools.cache
def _note_unavailable(role: str, forced: str, switched_off: bool) -> bool:
    what = _ROLES[role][1]
    if switched_off:
        why = "CHARNN_KERNELS=0 switches the compiled kernels off"
    elif forced and forced not in ISAS:
        why = f"CHARNN_ISA={forced} is none of {', '.join(ISAS)}"
    elif forced and not runs_here(role, forced):
        why = f"this CPU cannot run CHARNN_ISA={forced}"
    elif chosen_isa(role) is None:
        needs = "AVX-512 with VNNI, " if role == GENERATION else "AVX-512, "
        why = f"this CPU has none of {needs}AVX2 with FMA, or ARM NEON"
    else:
        return False
    print(f"charnn: note: {why}, so {what} does not run here: PyTorch's operations do, {_WITHOUT[role]}",
          file=sys.stderr)  # fmt: skip
    return True


@functools.cache
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
    if kernel.role == GENERATION and os.environ.get("CHARNN_AMX", "1") != "0":
        module.enable_tiles()
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
        child = subprocess.Popen([sys.executable, "-m", "charnn.fast.build", "--build", kernel.role, kernel.isa],
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
    print(f"charnn: compiling {kernel.what} ({kernel.isa}; once, under a minute)...", file=sys.stderr)
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


def load(role: str):
    """`role`'s kernel for this CPU (on CHARNN_ISA's instruction set, where set), or None where it cannot
    be built or run here."""
    if note_unavailable(role):
        return None
    return _load(kernel_for(role, chosen_isa(role)))


def load_generation():
    """The int8 generation kernel (csrc/gru_int8.cpp), or None where it cannot be built or run here."""
    return load(GENERATION)


def load_training():
    """The GRU training kernel (csrc/gru_train.cpp), or None where it cannot be built or run here."""
    return load(TRAINING)


def build_now() -> int:
    """Build (or find) the kernels; exit status for scripts/setup.sh (0: a failed build is not fatal)."""
    for role in (GENERATION, TRAINING):
        what = _ROLES[role][1]
        if not cpu_supports(role) or _switched_off():
            print(f"charnn: {what} does not run here: PyTorch's operations are used")
        else:
            ready = load(role) is not None
            print(f"charnn: {what} ({chosen_isa(role)}) " + ("ready" if ready else "NOT built (see the note above)"))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--build":
        sys.exit(_build(kernel_for(sys.argv[2], sys.argv[3])))
    sys.exit(build_now())
