"""Deterministic random weights of a preset's real shape, keyed by Hugging Face parameter names."""
from __future__ import annotations

import torch

from engines.model.config import ModelArgs


def hf_param_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every parameter of the Hugging Face LlamaForCausalLM / Qwen2ForCausalLM layout and its shape."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (args.vocab_size, args.dim)}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        for mod, (fin, fout) in args.module_shapes().items():
            group = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            shapes[f"{p}{group}.{mod}.weight"] = (fout, fin)
        if args.qkv_bias:
            shapes[f"{p}self_attn.q_proj.bias"] = (args.q_size,)
            shapes[f"{p}self_attn.k_proj.bias"] = (args.kv_size,)
            shapes[f"{p}self_attn.v_proj.bias"] = (args.kv_size,)
        shapes[f"{p}input_layernorm.weight"] = (args.dim,)
        shapes[f"{p}post_attention_layernorm.weight"] = (args.dim,)
    shapes["model.norm.weight"] = (args.dim,)
    if not args.tie_embeddings:
        shapes["lm_head.weight"] = (args.vocab_size, args.dim)
    return shapes


def random_state_dict(args: ModelArgs, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Normal(0, 0.02) matrices, ones for norms, small biases; the same seed gives the same weights on any device.

    Values are drawn on the CPU in float32 from one generator (so they do not depend on the device),
    then moved; for 8B shapes pass device="cuda" to avoid holding two copies in host memory.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, shape in hf_param_shapes(args).items():
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            t = torch.ones(shape)
        elif name.endswith(".bias"):
            t = torch.randn(shape, generator=gen) * 0.01
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        out[name] = t.to(device=device, dtype=dtype)
    return out
