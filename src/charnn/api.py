"""charnn in a few lines of Python: a loaded model with what one does with one as methods.

    import charnn

    base = charnn.load("base")                            # the base model that ships with charnn
    print(base.generate("The ", length=200, seed=1))
    mine = base.finetune("my-text.txt", "runs/mine", time_limit=2)   # a new run, loaded when it stops

`charnn.load` takes a checkpoint folder or a run folder too.

The methods are the library's functions (`charnn.generation`, `charnn.scoring.score`,
`charnn.training.finetune`) with the model and its vocabulary filled in; like the CLI, this is a
thin skin over them, and nothing in the library imports it.
"""

import dataclasses
from pathlib import Path

from charnn.beam import beam_search
from charnn.checkpoint import Checkpoint
from charnn.config import ModelConfig, SampleConfig, ScoreConfig, TrainConfig
from charnn.constraints import ban_bias
from charnn.errors import ConfigError
from charnn.generation import check_options, generate_text
from charnn.presets import with_preset
from charnn.run_folder import load_checkpoint
from charnn.sample import new_seed


class Model:
    """A loaded checkpoint (`checkpoint`): its network, vocabulary and card, and methods to use them."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    def card(self) -> str:
        return self.checkpoint.card()

    def generate(
        self,
        prime: str = "\n",
        length: int = 200,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        num_samples: int = 1,
        ban: str | None = None,
        allow: str | None = None,
        require: str | tuple[str, ...] = (),
        within: int | None = None,
        beam: int | None = None,
        length_penalty: float | None = None,
        stop: str | tuple[str, ...] = (),
    ) -> str | list[str]:
        """`length` new characters after `prime` (the text without the prime); a list of `num_samples` of
        them when more than one is asked for. The same seed gives the same text, as `charnn generate`'s.
        `ban` and `allow` are sets of characters never to draw, or the only ones to draw
        (`charnn.constraints.character_set`: ``"e"``, ``"a-m[:space:][:punct:]"``); every phrase of
        `require` appears within the first `within` characters (default: all); each text ends before the
        first of its `stop` strings. `beam` finds the most likely continuations instead
        (`charnn.beam.beam_search`), the same every time, ranked by log-probability / characters **
        `length_penalty`."""
        require, stop = _strings(require), _strings(stop)
        check_options(length=length, num_samples=num_samples, beam=beam, require=require, within=within,
                      length_penalty=length_penalty, stop=stop)  # fmt: skip
        bias = ban_bias(self.checkpoint.vocab, ban=ban, allow=allow) if ban or allow is not None else ()
        if beam is not None:
            found = beam_search(self.checkpoint.model, self.checkpoint.vocab, prime, length=length, width=beam,
                                logit_bias=bias, stop=stop, length_penalty=length_penalty or 0.0)  # fmt: skip
            return found.texts[0] if num_samples == 1 else found.texts[:num_samples]
        sampling = SampleConfig(temperature, top_k, top_p, logit_bias=bias)
        seed = new_seed() if seed is None else seed
        samples = generate_text(self.checkpoint.model, self.checkpoint.vocab, prime, length=length,
                                sampling=sampling, num_samples=num_samples, seed=seed, require=require,
                                within=within, stop=stop)  # fmt: skip
        return samples[0] if num_samples == 1 else samples

    def score(self, text: str, *, context: str = "", top_k: int = 5):
        """Each character's surprisal and the model's alternatives, with totals (`charnn.scoring.score.TextScore`)."""
        from charnn.scoring.score import score_text

        return score_text(self.checkpoint.model, self.checkpoint.vocab, text, ScoreConfig(top_k=top_k), context=context)

    def finetune(self, corpus, run_dir, *, preset: str | None = None, on_event=None, overwrite: bool = False,
                 **options) -> "Model":  # fmt: skip
        """Train this model further on `corpus` (a path, a folder, a URL, a known name or a `charnn.Corpus`)
        into the new run `run_dir`, then load the run's best checkpoint (else its last).

        `options` are TrainConfig fields, over the preset `charnn train` starts from (`preset`), as
        its flags are; a ModelConfig field may only repeat the model's shape, or set `dropout`.
        """
        from charnn.training import finetune

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(options) - fields - set(ModelConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"not options of fine-tuning: {', '.join(unknown)}; give TrainConfig fields")
        merged = with_preset(preset, options)  # the preset's dropout too, as `charnn train` takes it
        config = TrainConfig(**{k: v for k, v in merged.items() if k in fields})
        changes = {k: v for k, v in merged.items() if k in ModelConfig.__dataclass_fields__}
        result = finetune(corpus, self.path, config, run_dir, model_changes=changes, on_event=on_event,
                          overwrite=overwrite)  # fmt: skip
        return load(result.best_checkpoint or result.last_checkpoint)

    def __repr__(self) -> str:
        config = self.checkpoint.config
        return f"Model({str(self.path)!r}: {config.cell} {config.hidden_size}, {config.vocab_size} characters)"


def _strings(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """One string or several, as a tuple (a lone string is one phrase, not its characters)."""
    return (value,) if isinstance(value, str) else tuple(value)


def load(path: str | Path, device: str = "cpu") -> Model:
    """The model of a checkpoint folder, of a run folder (its best, else its newest checkpoint), or
    `"base"`: the base model that ships with charnn."""
    return Model(load_checkpoint(Path(path), device))
