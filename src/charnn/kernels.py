"""The compiled kernels (csrc/), built on first use and cached: the int8 generation step
(gru_int8.cpp, `load()`) and the fused gates of GRU training (gru_train.cpp, `load_training()`).

Each is compiled with PyTorch's extension builder (g++ and ninja) into charnn's cache
(CHARNN_CACHE, else ~/.cache/charnn), once per machine, source and PyTorch version; a loader
returns the module, or None where it cannot run here (a CPU without AVX-512, or without VNNI
for int8; no compiler; a failed build; CHARNN_KERNELS=0 in the environment), and callers then
use PyTorch's own operations. CHARNN_AMX=0 keeps the int8 kernel on VNNI for every row.

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
from charnn.hardware import cpu_flags

CSRC = Path(__file__).parent / "csrc"
UNITS = 16  # hidden units per block of the kernels: hidden sizes must be a multiple of it
# AVX-512 VNNI and AMX instructions; OpenMP so that at::parallel_for really runs in parallel
# (with PyTorch's own OpenMP runtime); no contraction, so every path rounds alike.
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma", "-mamx-tile", "-mamx-int8",
         "-fopenmp", "-ffp-contract=off"]  # fmt: skip
_AVX512 = {"avx512f", "avx512bw", "avx512vl", "fma"}


def cpu_supported() -> bool:
    """The int8 generation kernel needs AVX-512 with VNNI (AMX is used where present)."""
    return _AVX512 | {"avx512_vnni"} <= cpu_flags()


def cpu_supports_training() -> bool:
    """The training kernel needs AVX-512 only."""
    return _AVX512 <= cpu_flags()


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _build(name: str, source: str, what: str):
    """Compile csrc/`source` (once) and import it; None, after a one-line note, if that fails."""
    # One folder per source, flags and PyTorch version, in charnn's cache: a changed source or
    # a new PyTorch builds afresh, and an existing build says that no compiler run is coming.
    texts = [(CSRC / source).read_text(), (CSRC / "simd.h").read_text(), *FLAGS, torch.__version__]
    build_dir = cache_dir() / "kernels" / hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    try:
        from torch.utils.cpp_extension import load as build

        if not any(build_dir.glob(f"{name}*.so")):
            print(f"charnn: compiling {what} (once; under a minute)...", file=sys.stderr)
        build_dir.mkdir(parents=True, exist_ok=True)
        # The builder logs a screenful about an unexpected compiler; the note below says enough.
        with _quiet("torch.utils.cpp_extension"):
            return build(name, [str(CSRC / source)], extra_cflags=FLAGS, build_directory=str(build_dir))
    except Exception as error:  # no compiler, no ninja, a failed build: the slower path still works
        lines = [line.strip() for line in str(error).splitlines()]
        reason = next((line for line in lines if "error:" in line.lower() or "not found" in line), "")
        reason = reason[:200] or type(error).__name__
        print(f"charnn: note: {what} could not be built ({reason}); using PyTorch's operations instead (slower)",
              file=sys.stderr)  # fmt: skip
        return None


def _switched_off() -> bool:
    return os.environ.get("CHARNN_KERNELS", "1") == "0"


@functools.cache
def load():
    """The int8 generation kernel (csrc/gru_int8.cpp), or None where it cannot be built or run here."""
    if _switched_off() or not cpu_supported():
        return None
    module = _build("charnn_gru_int8", "gru_int8.cpp", "the int8 generation kernel")
    if module is not None and os.environ.get("CHARNN_AMX", "1") != "0":
        module.enable_tiles()
    return module


@functools.cache
def load_training():
    """The GRU training kernel (csrc/gru_train.cpp), or None where it cannot be built or run here."""
    if _switched_off() or not cpu_supports_training():
        return None
    return _build("charnn_gru_train", "gru_train.cpp", "the GRU training kernel")


def supports(hidden_size: int, device: torch.device) -> bool:
    """Whether the int8 generation kernel serves this model's steps."""
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
    """Build (or find) the kernels; exit status for scripts/setup.sh (0: a failed build is not fatal)."""
    for what, supported, loader in (
        ("int8 generation", cpu_supported, load),
        ("training", cpu_supports_training, load_training),
    ):
        if not supported():
            print(f"charnn: this CPU lacks what the {what} kernel needs: PyTorch's operations are used")
        else:
            print(f"charnn: {what} kernel " + ("ready" if loader() is not None else "NOT built (see the note above)"))
    return 0


if __name__ == "__main__":
    sys.exit(build_now())
