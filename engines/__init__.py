"""Serving engines: the engine interface, the built-in multi-LoRA engine, the baselines and the HTTP server."""
