"""A random-weight Hugging Face checkpoint of a preset's shape, with a byte-level tokenizer any HF loader reads."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engines.model.checkpoint import save_checkpoint
from engines.model.config import ModelArgs
from engines.model.weights import random_state_dict

TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
# the server's chat template (engines.tokenizer.chat_prompt) in Jinja, for servers that render chats themselves
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, the alphabet of the ByteLevel pre-tokenizer and decoder."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer(args: ModelArgs):
    """A `tokenizers` Tokenizer that encodes text as engines.tokenizer.ByteTokenizer does: id i < 256 is byte i.

    BOS and EOS sit at the model's ids; every other id up to vocab_size is a plain `<|reserved_i|>` token,
    so any id a random model samples decodes. A text prompt gets BOS in front (post-processor), as the
    byte tokenizer's encode(add_bos=True) does. Each byte id decodes to one character of its own, not
    as UTF-8: printable ASCII, space, tab and newline as themselves, every other byte as its stand-in of the
    byte-level alphabet (e.g. 0xC3 -> "Ã", 0x00 -> "Ā"). A random model's bytes are rarely valid UTF-8, and a
    server streaming them as UTF-8 holds back unfinished characters, so chunks would come without text and
    clients could not count tokens. Three replacements only: a decoder step per byte costs 20x more.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if args.vocab_size < 258:
        raise ValueError(f"{args.name}: vocab_size={args.vocab_size} is below 258 (256 bytes, BOS, EOS)")
    specials = {args.bos_token_id: BOS, args.eos_token_id: EOS}
    if any(i < 256 or i >= args.vocab_size for i in specials):
        raise ValueError(f"{args.name}: bos_token_id={args.bos_token_id} and eos_token_id={args.eos_token_id} "
                         f"must lie in [256, {args.vocab_size}) beside the 256 byte tokens")
    chars = byte_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    for i in range(256, args.vocab_size):
        vocab[specials.get(i, f"<|reserved_{i}|>")] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.Sequence([decoders.Replace(chars[b], chr(b)) for b in b" \t\n"])
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                            AddedToken(EOS, special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, args.bos_token_id)])
    return tok


def tokenizer_config(args: ModelArgs) -> dict:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast over tokenizer.json."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
            "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
            "model_max_length": args.max_seq_len, "chat_template": CHAT_TEMPLATE}


def write_tokenizer(args: ModelArgs, folder: Path) -> None:
    byte_tokenizer(args).save(str(folder / TOKENIZER_NAME))
    (folder / TOKENIZER_CONFIG_NAME).write_text(json.dumps(tokenizer_config(args), indent=2) + "\n", encoding="utf-8")
    (folder / GENERATION_CONFIG_NAME).write_text(json.dumps(
        {"bos_token_id": args.bos_token_id, "eos_token_id": args.eos_token_id, "do_sample": False}, indent=2) + "\n",
        encoding="utf-8")


def export_checkpoint(args: ModelArgs, out, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write config.json, model.safetensors (random weights, as the engines draw them for `args` and `seed`),
    tokenizer.json, tokenizer_config.json and generation_config.json into `out`; returns the folder."""
    if not dtype.is_floating_point:
        raise ValueError(f"dtype={dtype} must be a floating-point dtype (float16, bfloat16, float32)")
    folder = Path(out)
    byte_tokenizer(args)  # refuse a vocabulary the tokenizer cannot cover before writing anything
    save_checkpoint(args, random_state_dict(args, seed=seed, dtype=dtype), folder)
    write_tokenizer(args, folder)
    return folder
