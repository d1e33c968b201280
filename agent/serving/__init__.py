"""Model serving on the agent: runtimes, the model pool, endpoints, the predict path, the prediction log.

Heavy libraries (numpy, onnxruntime, torch) are imported here lazily, when the first model loads,
so an agent that serves nothing stays small.
"""
