"""Text generation: sampling parameters, stop strings, and the engines (vLLM, transformers, stand-in)."""
