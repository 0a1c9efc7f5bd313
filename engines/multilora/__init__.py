"""The built-in multi-LoRA engine: scheduler, block manager and adapter LRU (no torch), model runner, adapter pool, sampler."""
