"""Training a model: the loop and its rules (`trainer`), several processes (`distributed`), and the
loss curves of a run (`plot`)."""
