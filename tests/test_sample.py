import os
import subprocess
import sys

import pytest
import torch

from charnn.config import SampleConfig
from charnn.errors import ConfigError
from charnn.sample import sample_next
from conftest import SRC


def test_temperature_zero_is_argmax():
    generator = torch.Generator().manual_seed(0)  # its own generator: the same draws whatever test ran before
    logits = torch.randn(16, 30, generator=generator)
    chosen = sample_next(logits, SampleConfig(temperature=0), torch.rand(16, generator=generator))
    assert torch.equal(chosen, logits.argmax(-1))


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(20_000, -1)
    chosen = sample_next(
        logits, SampleConfig(temperature=1.0), torch.rand(20_000, generator=torch.Generator().manual_seed(1))
    )
    shares = torch.bincount(chosen, minlength=3).float() / 20_000
    torch.testing.assert_close(shares, torch.tensor([0.1, 0.6, 0.3]), atol=0.02, rtol=0)


def test_top_k_and_top_p_exclude_unlikely_characters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(5_000, -1)
    uniforms = torch.rand(5_000, generator=torch.Generator().manual_seed(2))
    assert set(sample_next(logits, SampleConfig(1.0, top_k=2), uniforms).tolist()) == {0, 1}
    assert set(sample_next(logits, SampleConfig(1.0, top_p=0.8), uniforms).tolist()) == {0, 1}
    assert set(sample_next(logits, SampleConfig(1.0, top_p=0.81), uniforms).tolist()) == {0, 1, 2}
    assert set(sample_next(logits, SampleConfig(1.0, top_p=0.01), uniforms).tolist()) == {0}


@pytest.mark.parametrize("options", [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}])
def test_invalid_sampling_options(options):
    with pytest.raises(ConfigError):
        SampleConfig(**options)


def test_the_sampler_loads_no_compiled_code():
    # The sampler is a pure function of logits: the compiled sampler belongs to the step (charnn.fast.step).
    code = "import sys, charnn.sample; print(' '.join(m for m in sys.modules if m.startswith('charnn')))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "charnn.sample" in loaded.split()
    assert not [name for name in loaded.split() if name.startswith(("charnn.fast", "charnn.model"))]
