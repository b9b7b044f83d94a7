"""The compiled int8 step (charnn.fast.build, charnn.fast.step): the same numbers as PyTorch's int8 operations, and
a row's result independent of its batch, of AMX against VNNI, and of the thread count."""

import json
import operator
import os
import subprocess
import sys
import threading
import time
from functools import partial

import pytest
import torch
from test_step import VOCAB, make_model

from charnn.checkpoint import save_checkpoint
from charnn.config import ModelConfig, SampleConfig
from charnn.fast import build
from charnn.fast.step import Stepper
from charnn.generation import generate, generate_text
from charnn.model import CharRNN
from charnn.sample import sample_next

pytestmark = [
    pytest.mark.skipif(not build.cpu_supports_generation(), reason="no instruction set for the kernel here"),
    pytest.mark.skipif(build._switched_off(), reason="CHARNN_KERNELS=0: the kernels are switched off"),
]


# Each instruction set this CPU runs (AVX-512 and AVX2 here), asked for by CHARNN_ISA: the same tests hold on each.
ISAS_HERE = [isa for isa in build.ISAS if build.runs_here(build.GENERATION, isa)]


@pytest.fixture(params=ISAS_HERE)
def isa(request, monkeypatch):
    monkeypatch.setenv("CHARNN_ISA", request.param)
    return request.param


def test_the_kernel_builds_here(isa):
    # On a CPU that can run it, a failed build is a bug, not a reason to skip.
    assert build.load_generation() is not None
    assert build.load_generation().isa() == isa


def random_state(stepper: Stepper, batch: int, seed: int) -> torch.Tensor:
    layers, hidden = stepper.model.config.num_layers, stepper.model.config.hidden_size
    return torch.rand(layers, batch, hidden, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 16, 19])
def test_compiled_step_matches_pytorch_int8(num_layers, batch, isa):
    model = make_model(num_layers=num_layers)
    compiled, plain = Stepper(model, "int8"), Stepper(model, "int8", compiled=False)
    assert compiled.fused is not None and plain.fused is None
    tokens = torch.randint(0, len(VOCAB), (batch, 40), generator=torch.Generator().manual_seed(batch))
    state_c = random_state(compiled, batch, 1)
    for t in range(40):
        # One step at a time from the same state: over many steps a rounding difference can
        # move an input across a quantization step, and the two would drift apart by 1/127s.
        state_p = state_c.clone()
        logits_c = compiled.step(tokens[:, t], state_c)
        logits_p = plain.step(tokens[:, t], state_p)
        # The same int8 sums; only the float rounding of the gates differs. With 2 layers that
        # rounding can move one of layer 1's quantized inputs by a step (1/127) within the
        # step: logits then move by about 1e-3. A wrong gate or product moves them by units.
        atol = 1e-4 if num_layers == 1 else 2e-2
        torch.testing.assert_close(logits_c, logits_p, rtol=0, atol=atol)
        torch.testing.assert_close(state_c, state_p, rtol=0, atol=atol)


def test_a_rows_numbers_do_not_depend_on_batch_tiles_or_threads(isa):
    model = make_model(num_layers=2)
    batch = 19  # 16 rows through AMX tiles (where the CPU has them), 3 through VNNI
    tokens = torch.randint(0, len(VOCAB), (batch,), generator=torch.Generator().manual_seed(4))
    start = random_state(Stepper(model, "int8"), batch, 2)

    def run(rows: list[int], threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            stepper, state = Stepper(model, "int8"), start[:, rows].contiguous()
            for _ in range(5):
                logits = stepper.step(tokens[rows], state).clone()
            return logits, state
        finally:
            torch.set_num_threads(before)

    together = run(list(range(batch)))
    alone = [run([i]) for i in range(batch)]
    assert torch.equal(together[0], torch.cat([a[0] for a in alone]))
    assert torch.equal(together[1], torch.cat([a[1] for a in alone], dim=1))
    assert all(torch.equal(x, y) for x, y in zip(run(list(range(batch)), threads=2), together, strict=True))
    module = build.load_generation()
    module.disable_tiles()
    try:
        assert all(torch.equal(x, y) for x, y in zip(run(list(range(batch))), together, strict=True))
    finally:
        module.enable_tiles()


def test_generated_samples_do_not_depend_on_their_batch(isa):
    model = make_model()
    sampling = SampleConfig(temperature=1.0)
    together = generate_text(
        model, VOCAB, "Pip", length=120, sampling=sampling, num_samples=18, seed=7, precision="int8"
    )
    for i in (0, 9, 17):
        alone = "".join(
            step[0]
            for step in generate(
                model,
                VOCAB,
                "Pip",
                length=120,
                sampling=sampling,
                num_samples=1,
                seed=7,
                first_sample=i,
                precision="int8",
            )
        )
        assert alone == together[i]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_the_prompt_goes_through_the_compiled_step(num_layers, isa):
    model = make_model(num_layers=num_layers)
    stepper = Stepper(model, "int8")
    assert stepper.fused is not None
    tokens = torch.randint(0, len(VOCAB), (3, 9), generator=torch.Generator().manual_seed(2))
    # A token at a time through step(), from the zero state: prefill gives the same numbers.
    state = stepper.init_state(3).contiguous()
    for t in range(9):
        expected = stepper.step(tokens[:, t], state).clone()
    logits, got = stepper.prefill(tokens)
    assert torch.equal(logits, expected) and torch.equal(got, state)
    # The same prompt in every row (as generate gives it) is computed once, with the same numbers.
    same = tokens[1:2].expand(4, -1)
    logits, got = stepper.prefill(same)
    assert logits.shape == (4, len(VOCAB)) and all(torch.equal(row, expected[1]) for row in logits)
    assert all(torch.equal(got[:, k], state[:, 1]) for k in range(4))
    # Its buffers are its own: logits the caller holds from step() are left alone.
    held = stepper.step(tokens[:, 0], state)
    before = held.clone()
    stepper.prefill(tokens)
    assert torch.equal(held, before)


def test_two_threads_stepping_at_once_get_their_own_numbers():
    # The kernel's threads serve one caller at a time; a second caller meanwhile must still get
    # exactly its own results (it runs its loops alone).
    model = make_model()
    batches = [torch.randint(0, len(VOCAB), (n, 40), generator=torch.Generator().manual_seed(n)) for n in (5, 7)]

    def steps(tokens):
        stepper = Stepper(model, "int8")
        state = stepper.init_state(tokens.shape[0]).contiguous()
        return torch.stack([stepper.step(tokens[:, t], state).clone() for t in range(tokens.shape[1])])

    alone = [steps(tokens) for tokens in batches]
    together = [None, None]
    workers = [threading.Thread(target=lambda i=i: together.__setitem__(i, steps(batches[i]))) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))


def test_hidden_sizes_off_the_block_fall_back_to_pytorch():
    model = make_model(hidden_size=40)  # not a multiple of 16
    stepper = Stepper(model, "int8")
    assert stepper.fused is None
    assert (
        len(generate_text(model, VOCAB, "Pip", length=30, sampling=SampleConfig(temperature=1.0), precision="int8")[0])
        == 30
    )


def test_charnn_kernels_0_switches_the_kernel_off():
    code = (
        "import torch; from charnn.fast import build; from charnn.fast.step import Stepper;"
        "from test_step import make_model; assert build.load_generation() is None;"
        "assert Stepper(make_model(), 'int8').fused is None; print('off')"
    )
    env = {**os.environ, "CHARNN_KERNELS": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "off"


@pytest.mark.parametrize(
    "sampling",
    [SampleConfig(temperature=0), SampleConfig(temperature=0.8), SampleConfig(temperature=1.3, top_k=5),
     SampleConfig(temperature=1.0, top_p=0.9), SampleConfig(temperature=0.5, top_k=20, top_p=0.5)],
)  # fmt: skip
def test_compiled_sampler_picks_what_sample_next_picks(sampling, isa):
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(3000, len(VOCAB), generator=generator) * 3
    logits[:5, :3] = 4.0  # ties for the largest logit: the first one wins in both
    uniforms = torch.rand(3000, generator=generator, dtype=torch.float64)
    stepper = Stepper(make_model(), "int8")
    assert stepper.fused is not None
    expected = sample_next(logits, sampling, uniforms)
    assert torch.equal(stepper.sample(logits, sampling, uniforms), expected)


def test_without_a_compiler_generation_goes_on_with_a_note(tmp_path):
    model = make_model()
    save_checkpoint(tmp_path / "ckpt_1", model, VOCAB, training={"epoch": 1}, corpus={})
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "CHARNN_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "charnn", "generate", str(tmp_path / "ckpt_1"), "--prime", "Pip", "--length", "30",
         "--precision", "int8", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["samples"][0]) == 30
    notes = [line for line in result.stderr.splitlines() if line.startswith("charnn: note:")]
    assert len(notes) == 1 and "could not be built" in notes[0] and "not found" in notes[0]
    assert "Traceback" not in result.stderr


def _lasting(make, seconds: float):
    """make(size) for the smallest size in 1, 2, 4, ... whose call takes `seconds` or more here and now."""
    size = 1
    while True:
        call = make(size)
        call()  # buffers allocated, weights warm
        start = time.perf_counter()
        call()
        if time.perf_counter() - start >= seconds:
            return call
        size *= 2


def test_the_kernel_lets_other_python_threads_run():
    # A server's event loop must go on while its engine thread steps: a step must leave the GIL
    # to the other threads. A worker thread runs kernel steps (and, to compare, sleeps and a call
    # that holds the GIL) while the main thread counts; the count during each kind of call, per
    # second of it, is compared with the count while the worker sleeps, in the same run.
    # Each call is bracketed by marks made in C (map over C functions runs no bytecode, so the
    # worker cannot hand over the GIL between a mark and the call): a count in a window is
    # Python that ran while the call did, never around it.
    torch.manual_seed(0)
    hidden = 512
    model = CharRNN(ModelConfig(len(VOCAB), hidden_size=hidden)).eval()
    stepper = Stepper(model, "int8")
    assert stepper.fused is not None

    def kernel_step(size: int):
        batch = 64 * size
        scratch = (torch.empty(batch, 3 * hidden), torch.empty(batch, hidden, dtype=torch.uint8),
                   torch.empty(batch, len(VOCAB)))  # fmt: skip
        return partial(stepper.fused.step, torch.zeros(batch, dtype=torch.long), stepper.init_state(batch), *scratch)

    # Calls long against a thread's wake-up (a few ms on a busy machine), whatever this machine's speed.
    kernel = _lasting(kernel_step, 0.05)
    held = _lasting(lambda size: partial(sum, range(100_000 * size)), 0.05)  # holds the GIL throughout
    outside, in_kernel, asleep, in_held = range(4)
    marks, ticks, seconds, finished = [outside], [0] * 4, [0.0] * 4, []

    def window(mark: int, call) -> float:
        chain = (
            partial(marks.append, mark),
            time.perf_counter,
            call,
            time.perf_counter,
            partial(marks.append, outside),
        )
        _, start, _, end, _ = list(map(operator.call, chain))
        seconds[mark] += end - start
        return end - start

    def worker():
        try:
            rounds = 0
            while rounds < 3 or seconds[in_kernel] < 0.5:  # enough windows to count, however fast they go
                took = window(in_kernel, kernel)
                window(asleep, partial(time.sleep, took))
                window(in_held, held)
                rounds += 1
        finally:
            finished.append(True)

    thread = threading.Thread(target=worker)
    thread.start()
    while not finished:
        ticks[marks[-1]] += 1
    thread.join()
    rate = [count / max(s, 1e-9) for count, s in zip(ticks, seconds, strict=True)]
    print(f"\nticks per second of the main thread, as a share of its rate while the worker sleeps: "
          f"during kernel steps {rate[in_kernel] / rate[asleep]:.2f}, during a GIL-holding call "
          f"{rate[in_held] / rate[asleep]:.2f}")  # fmt: skip
    assert ticks[asleep] > 0
    # The measurement tells a held GIL: nothing runs in the main thread meanwhile.
    assert rate[in_held] < 0.02 * rate[asleep]
    # Measured: 0.5 to 1 (the main thread shares the cores with the step); 0 were the GIL held.
    assert rate[in_kernel] > 0.2 * rate[asleep]
