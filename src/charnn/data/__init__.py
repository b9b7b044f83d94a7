"""Text in: finding and reading a corpus (`corpus`), decoding and normalising its text in one go
or in chunks (`reading`), preparing a large one once (`prepare`), a corpus split for training
(`dataset`), and the batches a training step reads (`batches`)."""
