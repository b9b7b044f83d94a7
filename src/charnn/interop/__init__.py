"""Models in and out of charnn: ONNX files (`onnx`), a page that generates in the browser (`web`),
and the reference tutorial's Keras weights (`keras`)."""
