"""Text in: reading and normalising a corpus (`corpus`), preparing a large one once (`prepare`),
a corpus split for training (`dataset`), and the batches a training step reads (`batches`)."""
