"""ModelArgs and named presets of real Llama-family shapes (weights are random unless a checkpoint is given)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class ModelArgs:
    name: str = "custom"
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    head_dim: int = 0  # 0: dim // n_heads
    intermediate_size: int = 14336
    vocab_size: int = 128256
    max_seq_len: int = 8192
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = None  # HF rope_scaling dict ("llama3", "linear") or None
    norm_eps: float = 1e-5
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    tie_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.name}: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of every LoRA-targetable linear layer."""
        return {
            "q_proj": (self.dim, self.q_size),
            "k_proj": (self.dim, self.kv_size),
            "v_proj": (self.dim, self.kv_size),
            "o_proj": (self.q_size, self.dim),
            "gate_proj": (self.dim, self.intermediate_size),
            "up_proj": (self.dim, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.dim),
        }

    def num_params(self) -> int:
        per_layer = sum(i * o for i, o in self.module_shapes().values()) + 2 * self.dim
        if self.qkv_bias:
            per_layer += self.q_size + 2 * self.kv_size
        embed = self.vocab_size * self.dim
        return self.n_layers * per_layer + embed * (1 if self.tie_embeddings else 2) + self.dim

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.n_layers * self.kv_size * dtype_bytes

    @classmethod
    def from_name(cls, name: str) -> "ModelArgs":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; presets: {sorted(PRESETS)} "
                             "(or give a folder with config.json and safetensors)")
        return cls(name=name, **PRESETS[name])

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], name: str = "checkpoint") -> "ModelArgs":
        archs = cfg.get("architectures") or []
        model_type = cfg.get("model_type", "")
        if model_type not in ("llama", "mistral", "qwen2") and not any(
                a in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM") for a in archs):
            raise ValueError(f"{name}: model_type={model_type!r} is not a Llama-family model "
                             "(llama, mistral, qwen2 are supported)")
        eos = cfg.get("eos_token_id", 2)
        return cls(
            name=name,
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
            head_dim=cfg.get("head_dim") or 0,
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            max_seq_len=cfg.get("max_position_embeddings", 4096),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            rope_scaling=cfg.get("rope_scaling"),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            qkv_bias=bool(cfg.get("attention_bias", model_type == "qwen2")),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            bos_token_id=cfg.get("bos_token_id") if cfg.get("bos_token_id") is not None else 1,
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """A config.json that transformers' LlamaForCausalLM (or Qwen2) loads."""
        qwen = self.qkv_bias
        return {
            "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
            "model_type": "qwen2" if qwen else "llama",
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "rms_norm_eps": self.norm_eps,
            "attention_bias": self.qkv_bias,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "hidden_act": "silu",
            "torch_dtype": "bfloat16",
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU and tests: byte tokenizer ids (256 bytes + BOS/EOS) fit in the vocabulary.
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128, vocab_size=512,
                 max_seq_len=2048, rope_theta=10000.0, bos_token_id=256, eos_token_id=257),
    "qwen2.5-0.5b": dict(dim=896, n_layers=24, n_heads=14, n_kv_heads=2, intermediate_size=4864,
                         vocab_size=151936, max_seq_len=32768, rope_theta=1e6, norm_eps=1e-6,
                         qkv_bias=True, tie_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    "qwen2.5-7b": dict(dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, intermediate_size=18944,
                       vocab_size=152064, max_seq_len=32768, rope_theta=1e6, norm_eps=1e-6,
                       qkv_bias=True, bos_token_id=151643, eos_token_id=151645),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, intermediate_size=11008,
                      vocab_size=32000, max_seq_len=4096, rope_theta=10000.0),
    "llama3-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, intermediate_size=14336,
                      vocab_size=128256, max_seq_len=8192, rope_theta=500000.0,
                      bos_token_id=128000, eos_token_id=128001),
    "llama3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, intermediate_size=14336,
                        vocab_size=128256, max_seq_len=131072, rope_theta=500000.0,
                        rope_scaling=_LLAMA3_SCALING, bos_token_id=128000, eos_token_id=128001),
    "mistral-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, intermediate_size=14336,
                       vocab_size=32000, max_seq_len=32768, rope_theta=1e6),
}
