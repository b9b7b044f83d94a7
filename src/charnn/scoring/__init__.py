"""How well a model predicts a text: per-character scores (`score`), a text's loss beside n-gram and
gzip baselines (`evaluate`, `ngram`, and `dynamic` evaluation), and a page coloured by surprisal
(`highlight`). `loop` is the one pass that reads a text through a model, for all of them."""
