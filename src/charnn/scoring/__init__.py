"""How well a model predicts a text: per-character scores (`score`), a text's loss beside n-gram and
gzip baselines (`evaluate`, `ngram`), and a page coloured by surprisal (`highlight`)."""
