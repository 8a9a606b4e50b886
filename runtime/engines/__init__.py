"""precipfast.runtime.engines: the model bundle and the engines that run its denoisers (torch, ONNX Runtime, TensorRT)."""
