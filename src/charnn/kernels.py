"""The compiled int8 generation step (csrc/gru_int8.cpp), built on first use and cached.

`load()` compiles the C++ source with PyTorch's extension builder (g++ and ninja) into
charnn's cache (CHARNN_CACHE, else ~/.cache/charnn), once per machine, source and PyTorch
version, and returns the module; or None where it cannot run here (no x86 CPU with AVX-512
VNNI, no compiler, a failed build, or CHARNN_KERNELS=0 in the environment), and callers then
step through PyTorch's own operations. CHARNN_AMX=0 keeps the kernel on VNNI for every row.

`pack` rearranges one int8 weight matrix for the kernel; see the layout note in the source.
"""

import contextlib
import functools
import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

from charnn.corpus import cache_dir

SOURCE = Path(__file__).parent / "csrc" / "gru_int8.cpp"
UNITS = 16  # hidden units per block of the kernel: hidden sizes must be a multiple of it
# AVX-512 VNNI and AMX instructions; OpenMP so that at::parallel_for really runs in parallel
# (with PyTorch's own OpenMP runtime); no contraction, so every path rounds alike.
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-mamx-tile", "-mamx-int8",
         "-fopenmp", "-ffp-contract=off"]  # fmt: skip


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supported() -> bool:
    return {"avx512f", "avx512bw", "avx512vl", "avx512_vnni", "fma"} <= _cpu_flags()


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.cache
def load():
    """The compiled module, or None where it cannot be built or run here."""
    if os.environ.get("CHARNN_KERNELS", "1") == "0" or not cpu_supported():
        return None
    # One folder per source, flags and PyTorch version, in charnn's cache: a changed source or
    # a new PyTorch builds afresh, and an existing build says that no compiler run is coming.
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *FLAGS, torch.__version__]).encode()).hexdigest()[:16]
    build_dir = cache_dir() / "kernels" / key
    try:
        from torch.utils.cpp_extension import load as build

        if not any(build_dir.glob("*.so")):
            print("charnn: compiling the int8 generation step (once; about a minute)...", file=sys.stderr)
        build_dir.mkdir(parents=True, exist_ok=True)
        # The builder logs a screenful about an unexpected compiler; the note below says enough.
        with _quiet("torch.utils.cpp_extension"):
            module = build("charnn_gru_int8", [str(SOURCE)], extra_cflags=FLAGS, build_directory=str(build_dir))
    except Exception as error:  # no compiler, no ninja, a failed build: the slower path still works
        lines = [line.strip() for line in str(error).splitlines()]
        reason = next((line for line in lines if "error:" in line.lower() or "not found" in line), "")
        reason = reason[:200] or type(error).__name__
        print(f"charnn: note: the int8 generation kernel could not be built ({reason}); generating "
              "with PyTorch's operations instead (slower)", file=sys.stderr)  # fmt: skip
        return None
    if os.environ.get("CHARNN_AMX", "1") != "0":
        module.enable_tiles()
    return module


def supports(hidden_size: int, device: torch.device) -> bool:
    return device.type == "cpu" and hidden_size % UNITS == 0 and load() is not None


def pack(q: torch.Tensor) -> torch.Tensor:
    """int8 (3H, K) in PyTorch's (r, z, n) row order -> the kernel's blocks.

    Block i holds units [16 i, 16 i + 16): for each group of 4 inputs, the r rows, then the
    z rows, then the n rows of those units, 4 bytes each, so one 64-byte load feeds 16 units.
    """
    rows, inputs = q.shape
    hidden = rows // 3
    blocks = q.view(3, hidden // UNITS, UNITS, inputs // 4, 4)  # gate, block, unit, group, 4
    return blocks.permute(1, 3, 0, 2, 4).contiguous().view(hidden // UNITS, inputs // 4, 3 * UNITS * 4)


def build_now() -> int:
    """Build (or find) the kernel; exit status for scripts/setup.sh."""
    if not cpu_supported():
        print("charnn: no AVX-512 VNNI on this CPU: generation uses PyTorch's operations")
        return 0
    module = load()
    print("charnn: int8 generation kernel " + ("ready" if module is not None else "NOT built (see the note above)"))
    return 0


if __name__ == "__main__":
    sys.exit(build_now())
