"""What the CPU offers, where there is no /proc/cpuinfo (charnn.hardware.cpu_flags): macOS's sysctl
output read into Linux's names, and PyTorch's vector level as a last resort; and the whole CLI
with /proc hidden, as on macOS."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from charnn import hardware
from charnn.fast import build
from charnn.locks import hold
from conftest import SRC, TINY_TEXT

# `sysctl machdep.cpu.features machdep.cpu.leaf7_features hw.optional` on an Intel Mac with AVX-512
# (Ice Lake, abridged) and on an Apple M2.
ICE_LAKE_MAC = """\
machdep.cpu.features: FPU VME DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE SSE SSE2 SSE3 SSSE3 FMA SSE4.1 \
SSE4.2 x2APIC MOVBE POPCNT AES XSAVE OSXSAVE AVX1.0 RDRAND F16C
machdep.cpu.leaf7_features: RDWRFSGS BMI1 AVX2 SMEP BMI2 ERMS AVX512F AVX512DQ RDSEED ADX AVX512IFMA AVX512CD \
AVX512BW AVX512VL AVX512VBMI GFNI VAES AVX512VNNI AVX512BITALG AVX512VPOPCNTDQ
hw.optional.avx1_0: 1
hw.optional.avx2_0: 1
hw.optional.avx512f: 1
hw.optional.rdrand: 1
hw.optional.sgx: 0
"""
APPLE_M2 = """\
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_BF16: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_SME: 0
hw.optional.neon: 1
hw.optional.AdvSIMD: 1
hw.optional.floatingpoint: 1
"""


def test_an_intel_mac_with_avx512_vnni_gets_the_flags_the_kernels_ask_for():
    flags = set(hardware.sysctl_flags(ICE_LAKE_MAC))
    assert {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "sse4_2"} <= flags
    assert "sgx" not in flags  # hw.optional.sgx: 0
    assert build._AVX512 | {"avx512_vnni"} <= flags  # what cpu_supports_generation asks of cpu_flags()


def test_an_apple_m2_gets_linux_arm_names():
    flags = set(hardware.sysctl_flags(APPLE_M2))
    assert {"asimd", "asimddp", "bf16", "i8mm", "floatingpoint"} <= flags
    assert "feat_sme" not in flags and "sme" not in flags


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares with /proc/cpuinfo")
def test_pytorchs_vector_level_is_told_in_linux_names():
    # On Linux, /proc/cpuinfo says everything: what PyTorch's vector level implies must be among it.
    implied = hardware._torch_flags()
    assert implied <= hardware._linux_flags()
    assert implied or torch_capability() not in ("AVX2", "AVX512")


def torch_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


# The CLI with /proc hidden, as on macOS: a mount namespace (`unshare -rm`, no root needed where
# the system allows user namespaces) with an empty file system over /proc.
WITHOUT_PROC = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs none /proc && exec "$@"', "sh"]


def _without_proc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    command = [*WITHOUT_PROC, sys.executable, "-m", "charnn", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _namespaces_work() -> bool:
    try:
        return subprocess.run([*WITHOUT_PROC, "test", "!", "-e", "/proc/cpuinfo"], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(not _namespaces_work(), reason="no user and mount namespaces here (unshare -rm)")
def test_the_cli_runs_end_to_end_without_proc(tmp_path):
    (tmp_path / "corpus.txt").write_text(TINY_TEXT * 40, encoding="utf-8")
    shape = ["--hidden-size", "32", "--embedding-dim", "16", "--seq-len", "20", "--batch-size", "8"]
    trained = _without_proc("train", "corpus.txt", "--out", "run", *shape, "--max-steps", "2", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    # No CPU flags to be had: the kernels do not run, and the first thing said is which path does, at what cost.
    said = [line for line in trained.stderr.splitlines() if not line.startswith("Error in cpuinfo")]  # PyTorch's
    assert said[0].startswith("charnn: note: ") and "PyTorch's operations do, training about" in said[0], said

    generated = _without_proc("generate", "run", "--prime", "“Pip", "--length", "50", "--seed", "1", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("“Pip") and len(generated.stdout) == 4 + 50 + 1
    assert "PyTorch's operations do, one-stream generation about" in generated.stderr
    described = _without_proc("info", "run", cwd=tmp_path)
    assert described.returncode == 0 and "Total" in described.stdout, described.stderr

    # Who holds a lock cannot be told without /proc/locks: the message says so without a number.
    with hold(tmp_path / "run", what="the test's hold"):
        resumed = _without_proc("train", "--resume", "run", cwd=tmp_path)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().endswith(
        "charnn: error: run folder run is in use by another process; wait for it to finish or stop it, or choose "
        "another folder"
    ), resumed.stderr


HOG = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])}); print('spinning', flush=True)\nwhile True: pass"


@pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_a_core_another_process_keeps_busy_is_not_counted_free():
    cores = sorted(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(cores[0])], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "spinning"
        assert hardware.free_cores() <= len(cores) - 1
        assert 1 <= hardware.default_threads() <= max(1, len(cores) - 1)
    finally:
        hog.kill()
        hog.wait()


def test_charnn_train_saves_the_thread_count_it_chose(tmp_path):
    (tmp_path / "corpus.txt").write_text(TINY_TEXT * 40, encoding="utf-8")
    shape = ["--hidden-size", "32", "--embedding-dim", "16", "--seq-len", "20", "--batch-size", "8", "--max-steps", "1"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run([sys.executable, "-m", "charnn", "train", "corpus.txt", "--out", "run", "--init-from", "none",
                           *shape], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    from charnn.run_folder import load_checkpoint

    threads = load_checkpoint(tmp_path / "run").training["config"]["threads"]
    assert isinstance(threads, int) and 1 <= threads <= len(os.sched_getaffinity(0))  # a resumed run keeps it
    assert f", {threads} thread" in done.stdout + done.stderr
