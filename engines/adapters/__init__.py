"""LoRA adapters: the in-memory LoRAAdapter, PEFT-format reading/writing with validation, synthetic adapters."""
