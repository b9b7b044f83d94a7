"""The compiled kernels' cores on every instruction set they are written for (issue 29): csrc/core_test.cpp, plain
C++ with no PyTorch, built for AVX-512 and AVX2 where this CPU runs them, and cross-compiled for ARM (NEON, with and
without the dot product instructions) to run under QEMU's user-mode emulation; then the AVX2 build of the PyTorch
kernel beside the AVX-512 one: the same numbers."""

import platform
import shutil
import subprocess

import pytest
import torch
from test_step import VOCAB, make_model

from charnn.fast import build
from charnn.fast.step import Stepper

CORE_TEST = build.CSRC / "core_test.cpp"
X86_FLAGS = {"avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mfma"], "avx2": ["-mavx2", "-mfma"]}
# Debian's cross compiler and QEMU (scripts/test.sh installs them where it runs as root).
CROSS, QEMU = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")


def _build_and_run(compiler: str, flags: list[str], out, runner: list[str]) -> str:
    binary = out / "core_test"
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", *flags, str(CORE_TEST), "-o", str(binary),
                    "-lpthread"], check=True, capture_output=True, timeout=600)  # fmt: skip
    result = subprocess.run([*runner, str(binary)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_the_x86_cores_equal_the_scalar_reference(isa, tmp_path):
    if platform.machine().lower() not in ("x86_64", "amd64") or not build.runs_here(build.TRAINING, isa):
        pytest.skip(f"this CPU does not run {isa}")
    out = _build_and_run(shutil.which("g++") or "c++", X86_FLAGS[isa], tmp_path, [])
    assert f"core_test {isa}: 18 passed, 0 failed" in out, out


@pytest.mark.skipif(CROSS is None or QEMU is None, reason="no aarch64 cross compiler or qemu-aarch64 (apt-get install "
                    "g++-aarch64-linux-gnu qemu-user; scripts/test.sh does, as root)")  # fmt: skip
@pytest.mark.parametrize(("march", "name"), [("armv8-a", "neon"), ("armv8.2-a+dotprod", "neon-dotprod")])
def test_the_arm_cores_equal_the_scalar_reference_under_emulation(march, name, tmp_path):
    # Static, so that QEMU needs no ARM system libraries; "max" emulates every extension, the dot product included.
    out = _build_and_run(CROSS, [f"-march={march}", "-static"], tmp_path, [QEMU, "-cpu", "max"])
    assert f"core_test {name}: 18 passed, 0 failed" in out, out


@pytest.mark.skipif(not all(build.runs_here(build.GENERATION, isa) for isa in ("avx512", "avx2")) or
                    build._switched_off(), reason="needs a CPU that runs both AVX-512 VNNI and AVX2")  # fmt: skip
def test_the_avx2_step_gives_the_avx512_states_bit_for_bit(monkeypatch):
    """Exact int8 sums and the same float operations in the same order: only the output layer's long sums
    may round differently."""
    tokens = torch.randint(0, len(VOCAB), (19, 12), generator=torch.Generator().manual_seed(3))
    results = {}
    for isa in ("avx512", "avx2"):
        monkeypatch.setenv("CHARNN_ISA", isa)
        stepper = Stepper(make_model(num_layers=2, hidden_size=32), "int8")
        assert build.load_generation().isa() == isa and stepper.fused is not None
        state = stepper.init_state(19).contiguous()
        logits = [stepper.step(tokens[:, t], state).clone() for t in range(tokens.shape[1])]
        results[isa] = state, torch.stack(logits)
    assert torch.equal(results["avx512"][0], results["avx2"][0])
    torch.testing.assert_close(results["avx512"][1], results["avx2"][1], rtol=0, atol=1e-5)
