"""charnn: character-level recurrent language models. Train on any text, generate in its style.

    import charnn
    from charnn.training import train

    data = charnn.open_corpus("great-expectations")
    train(data, charnn.ModelConfig(vocab_size=len(data.vocab)), charnn.TrainConfig(epochs=1), "runs/ge")
    model = charnn.load("runs/ge")  # a Model: generate, score and finetune as methods (charnn.api)
    print(model.generate("Pip", length=200))

Names are imported lazily, so `import charnn` alone does not load PyTorch.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CharnnError": "charnn.errors",
    "ModelConfig": "charnn.config",
    "TrainConfig": "charnn.config",
    "SampleConfig": "charnn.config",
    "Corpus": "charnn.data.corpus",
    "load_corpus": "charnn.data.corpus",
    "Dataset": "charnn.data.dataset",
    "open_corpus": "charnn.data.dataset",
    "Vocabulary": "charnn.vocab",
    "CharRNN": "charnn.model",
    "Checkpoint": "charnn.checkpoint",
    "load_checkpoint": "charnn.run_folder",
    "generate": "charnn.generation",
    "generate_text": "charnn.generation",
    "load": "charnn.api",
    "Model": "charnn.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'charnn' has no attribute {name!r}")
