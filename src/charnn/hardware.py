"""Where and in what precision to compute: CUDA when present, bf16 where the CPU has it natively;
what the CPU offers (`cpu_flags`, on Linux, macOS or elsewhere) and how much memory there is."""

import contextlib
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from charnn.errors import TrainingError


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, by the names Linux gives them (avx2, avx512f, avx512_vnni, amx_int8 on
    x86; asimd, asimddp, bf16, i8mm on ARM): from /proc/cpuinfo on Linux, from sysctl on macOS, which
    has no /proc, else from PyTorch's own reading of the CPU, which gives the vector level only."""
    return _linux_flags() or _macos_flags() or _torch_flags()


def _linux_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86, ARM
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def _macos_flags() -> frozenset[str]:
    if sys.platform != "darwin":
        return frozenset()
    words = []
    for names in (["machdep.cpu.features", "machdep.cpu.leaf7_features"], ["hw.optional"]):  # Intel's; both
        try:
            found = subprocess.run(["sysctl", *names], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        words += sysctl_flags(found.stdout)
    return frozenset(words)


# macOS's names (upper-cased words of machdep.cpu.*, keys of hw.optional.*) that Linux spells otherwise.
_MACOS_NAMES = {"avx1.0": "avx", "avx1_0": "avx", "avx2_0": "avx2", "sse4.1": "sse4_1", "sse4.2": "sse4_2",
                "avx512vnni": "avx512_vnni", "avx512vbmi2": "avx512_vbmi2", "avx512bitalg": "avx512_bitalg",
                "avx512vpopcntdq": "avx512_vpopcntdq", "avx512bf16": "avx512_bf16", "avxvnni": "avx_vnni",
                "neon": "asimd", "advsimd": "asimd", "feat_dotprod": "asimddp", "feat_bf16": "bf16",
                "feat_i8mm": "i8mm", "feat_fp16": "asimdhp", "feat_fhm": "asimdfhm"}  # fmt: skip


def sysctl_flags(text: str) -> list[str]:
    """Linux's names for what macOS's `sysctl machdep.cpu.features machdep.cpu.leaf7_features hw.optional`
    printed: "machdep.cpu.features: FPU ... AVX1.0" lines, and "hw.optional.arm.FEAT_DotProd: 1" ones."""
    names = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("machdep.cpu."):
            names += value.lower().split()
        elif key.startswith("hw.optional.") and value.strip() == "1":
            names.append(key.rsplit(".", 1)[1].lower())
    return [_MACOS_NAMES.get(name, name) for name in names]


def _torch_flags() -> frozenset[str]:
    """What PyTorch's vector level implies (ATen asks for FMA with AVX2, and BW, VL, DQ with AVX-512)."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")()
    implied = {"AVX2": {"avx", "avx2", "fma"}, "AVX512": {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                                          "avx512dq"}}  # fmt: skip
    return frozenset(implied.get(capability, ()))


def free_cores(seconds: float = 0.25) -> int | None:
    """How many of the cores this process may run on other processes leave idle: two readings of
    /proc/stat `seconds` apart, a core more than half busy counting as taken; None without /proc/stat."""

    def read() -> dict[int, tuple[int, int]]:  # cpu -> (idle and iowait ticks, all ticks)
        ticks = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                numbers = [int(v) for v in values[:8]]
                ticks[int(name[3:])] = (numbers[3] + numbers[4], sum(numbers))
        return ticks

    try:
        before = read()
        time.sleep(seconds)  # the window the share is measured over
        after = read()
    except (OSError, ValueError, IndexError):
        return None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(after)
    free = 0
    for cpu in allowed & before.keys() & after.keys():
        idle, total = after[cpu][0] - before[cpu][0], after[cpu][1] - before[cpu][1]
        free += total <= 0 or idle / total > 0.5
    return free


def default_threads() -> int:
    """Threads for a `charnn train` run that asks for none: the cores other processes leave free when it
    starts, at least one (all where that cannot be read). A thread whose core another process holds stalls
    every step of the others: beside one busy process, 2 threads kept 40% of their idle rate, 1 thread 59%
    (docs/results.md, "A busy machine")."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = free_cores()
    return cores if free is None else max(1, min(cores, free))


def memory_bytes() -> int | None:
    """The machine's physical memory, or None where the system does not say (Windows has no sysconf)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def cpu_has_bf16() -> bool:
    return not cpu_flags().isdisjoint({"amx_bf16", "avx512_bf16"})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("`device` cuda was asked for but no CUDA GPU is available; use `device` cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware computes it natively, else fp32."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise TrainingError("`precision` fp16 needs a CUDA GPU; use bf16 or fp32 on a CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def precision_note(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """What `precision` `name` became, and why where `auto` chose: for a run's first line."""
    chosen = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if name != "auto":
        return chosen
    if device.type == "cuda":
        return f"{chosen} (auto, on CUDA)"
    native = sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    # Where the CPU has bf16 natively, bf16 trained about 3.3x faster than fp32 on the EPYC (issue 29); elsewhere
    # it is emulated.
    return f"bf16 (auto: the CPU has {' and '.join(native)})" if native else "fp32 (auto: no native bf16 on this CPU)"


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
