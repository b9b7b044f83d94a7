"""Constraints on what a sample holds: a banned character never appears, whatever the path that draws it."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import charnn
from charnn.config import BAN, SampleConfig
from charnn.constraints import ban_bias, character_set
from charnn.errors import ConfigError
from charnn.fast import build
from charnn.generation import generate_text
from charnn.run_folder import load_checkpoint
from charnn.sample import sample_next
from charnn.vocab import Vocabulary
from conftest import run_cli


def test_a_set_is_written_with_characters_ranges_classes_and_escapes():
    assert character_set("a-cx") == {"a", "b", "c", "x"}
    assert character_set("\\n\\-\\\\") == {"\n", "-", "\\"}
    assert character_set("[:digit:][:space:]", "ab1 2\n") == {"1", "2", " ", "\n"}
    assert character_set("[:upper:][:punct:]", "aB“,é") == {"B", "“", ","}
    assert character_set("[:alpha:]", "aé你1") == {"a", "é", "你"}
    with pytest.raises(ConfigError, match="unknown character class"):
        character_set("[:vowel:]")
    with pytest.raises(ConfigError, match="runs backwards"):
        character_set("z-a")


def test_ban_and_allow_become_a_bias_that_bans_the_rest():
    vocab = Vocabulary(tuple("\n abcde"))
    assert ban_bias(vocab, ban="b-c") == ((3, BAN), (4, BAN))
    assert ban_bias(vocab, allow="a[:space:]") == ((3, BAN), (4, BAN), (5, BAN), (6, BAN))
    with pytest.raises(ConfigError, match="no character of the model's vocabulary"):
        ban_bias(vocab, allow="xyz")
    with pytest.raises(ConfigError, match="bans every character"):
        sample_next(torch.zeros(1, 2), SampleConfig(logit_bias=((0, BAN), (1, BAN))), torch.rand(1))
    with pytest.raises(ConfigError, match="indices the vocabulary of 2 characters lacks: \\[5\\]"):
        sample_next(torch.zeros(1, 2), SampleConfig(logit_bias=((5, 1.0),)), torch.rand(1))


def samplers():
    yield "sample_next", sample_next
    if build.cpu_supports_generation() and not build._switched_off():
        kernel = build.load_generation()

        def compiled(logits, sampling, uniforms):
            top_p = 1.0 if sampling.top_p is None else sampling.top_p
            biased = logits + torch.tensor([float("-inf") if v <= BAN else v for v in _bias(sampling, logits)])
            return kernel.sample(biased, sampling.temperature, sampling.top_k or 0, top_p, uniforms)

        yield "compiled", compiled


def _bias(sampling, logits):
    values = [0.0] * logits.shape[-1]
    for index, value in sampling.logit_bias:
        values[index] = value
    return values


@pytest.mark.parametrize("name,sampler", list(samplers()))
def test_a_uniform_that_rounds_up_to_the_total_does_not_fall_on_a_banned_last_character(name, sampler):
    logits = torch.tensor([[0.3, 0.1, 2.0, 0.0]])
    sampling = SampleConfig(temperature=1.0, logit_bias=((3, BAN),))
    # 1.0 itself stands for a product u * total that rounded up to the total.
    for uniform in (1.0 - 2**-53, 0.9999999, 1.0):
        chosen = sampler(logits, sampling, torch.tensor([uniform], dtype=torch.float64))
        assert chosen.item() == 2, (name, uniform)


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return load_checkpoint(tiny_run)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    banned=st.sets(st.integers(0, 33), min_size=1, max_size=30),
    precision=st.sampled_from(["fp32", "bf16", "int8"]),
    num_samples=st.sampled_from([1, 4]),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_k=st.sampled_from([None, 1, 3, 40]),
    top_p=st.sampled_from([None, 0.3, 0.9]),
)
def test_no_banned_character_ever_appears(checkpoint, seed, banned, precision, num_samples, temperature, top_k, top_p):
    vocab = checkpoint.vocab
    banned_characters = {vocab.characters[i] for i in banned if i < len(vocab)}
    spec = "".join("\\" + c if c in "\\-[" else c for c in sorted(banned_characters))
    if len(banned_characters) == len(vocab):
        return  # every character banned: refused, tested above
    sampling = SampleConfig(temperature, top_k, top_p, logit_bias=ban_bias(vocab, ban=spec))
    samples = generate_text(checkpoint.model, vocab, "“Pip", length=60, sampling=sampling, num_samples=num_samples,
                            seed=seed, precision=precision)  # fmt: skip
    assert len(samples) == num_samples
    for sample in samples:
        assert len(sample) == 60 and not set(sample) & banned_characters


def test_the_command_line_and_python_keep_to_the_allowed_letters(tiny_run):
    allowed = set("aeiost ")
    for seed in range(5):
        done = run_cli("generate", str(tiny_run), "--prime", "Pip", "--length", "80", "--seed", str(seed),
                       "--num-samples", "3", "--allow", "aeiost ", "--temperature", "1.5", "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        for sample in json.loads(done.stdout)["samples"]:
            assert set(sample) <= allowed
    model = charnn.load(tiny_run)
    assert "e" not in model.generate("Pip", length=200, ban="e", temperature=1.5, seed=1)
    done = run_cli("generate", str(tiny_run), "--allow", "[:vowel:]")
    assert done.returncode == 2 and "unknown character class" in done.stderr
    done = run_cli("generate", str(tiny_run), "--allow", "XYZ")
    assert done.returncode == 2 and done.stderr.strip().endswith(
        "leave no character of the model's vocabulary to draw; allow some"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    phrases=st.lists(
        st.sampled_from(["Joe", "marsh", "stars", "你好", "—", "ee", "the river"]), min_size=1, max_size=3
    ),
    within=st.integers(25, 60),
    precision=st.sampled_from(["fp32", "int8"]),
    num_samples=st.sampled_from([1, 3]),
    temperature=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_every_required_phrase_appears_within_its_bound(checkpoint, seed, phrases, within, precision, num_samples,
                                                       temperature):  # fmt: skip
    sampling = SampleConfig(temperature, logit_bias=ban_bias(checkpoint.vocab, ban="Q!"))  # and a ban beside it
    samples = generate_text(checkpoint.model, checkpoint.vocab, "Pip", length=60, sampling=sampling, seed=seed,
                            num_samples=num_samples, precision=precision, require=tuple(phrases),
                            within=within)  # fmt: skip
    for sample in samples:
        assert len(sample) == 60 and "!" not in sample
        for phrase in phrases:
            assert phrase in sample[:within], (phrase, sample)


def test_required_phrases_that_cannot_be_met_are_refused_with_a_reason(checkpoint, tiny_run):
    vocab = checkpoint.vocab

    def refused(**options) -> str:
        with pytest.raises(ConfigError) as caught:
            generate_text(checkpoint.model, vocab, "Pip", length=options.pop("length", 20), **options)
        return str(caught.value)

    assert "need 12 characters, more than the 10" in refused(require=("the river", "Joe"), within=10)
    assert "uses banned characters: 'J'" in refused(require=("Joe",), sampling=SampleConfig(logit_bias=ban_bias(
        vocab, ban="J")))  # fmt: skip
    assert "characters the model does not know: 'Z'" in refused(require=("Zoo",))
    assert "`within` must be from 1 to `length` (20), got 30" in refused(require=("Joe",), within=30)
    done = run_cli("generate", str(tiny_run), "--require", "Joe", "--beam", "2")
    assert done.returncode == 2 and "--require places phrases in sampled text" in done.stderr
    done = run_cli("generate", str(tiny_run), "--prime", "Pip", "--length", "40", "--require", "stars", "--require",
                   "Joe", "--within", "30", "--num-samples", "2", "--seed", "4", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for sample in json.loads(done.stdout)["samples"]:
        assert "stars" in sample[:30] and "Joe" in sample[:30]
