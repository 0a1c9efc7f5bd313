"""Llama-family model: arguments and presets, the model, checkpoint loading."""
