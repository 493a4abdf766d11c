"""One fine-tune: the run plan, then `olive run` locally or as an Azure ML job (aml/), and the
verified run folder; `export` builds more ONNX models from a finished run."""
