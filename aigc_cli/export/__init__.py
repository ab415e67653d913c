"""Export a checkpoint to formats other runtimes load: GGUF (llama.cpp, Ollama), ONNX, merged safetensors."""
