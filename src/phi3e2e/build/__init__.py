"""Every ONNX build, decided and run in one place, below train/, evaluate/ and serve/.

options       the int4 options a build uses (phi3e2e's measured CPU choice) and whether it is for cpu or cuda
olive_runner  `olive run` as a subprocess: progress lines, the log, the real error when a pass failed
olive_outputs the models Olive produced, read with its own footprint
lean_int4     ModelBuilder's int4 step weight by weight (a 32-layer build in 24 GB)
export        `phi3e2e export`: another build from a finished run's merged model
base_int4     the base model built like a run's int4 model, cached in model-cache/.onnx-int4/
adapter_int4  a run shipped as its adapter on the int4 base its kin share, in model-cache/.onnx-int4-adapters/
"""
