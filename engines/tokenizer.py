"""Tokenizers for the server: bytes for presets, a checkpoint's tokenizer.json otherwise; with streaming decode."""
from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path
from typing import Protocol

from engines.model.config import PRESETS, ModelArgs

PLACEHOLDER_BYTE = b"?"  # what an id beyond the byte range decodes to (random models still stream text)


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The one simple chat template: `<|role|>` headers, then the assistant header to complete."""
    parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


class StreamDecoder(Protocol):
    def push(self, ids: list[int]) -> str: ...
    def flush(self) -> str: ...


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None
    vocab_size: int

    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def stream_decoder(self) -> StreamDecoder: ...


class _ByteStreamDecoder:
    """UTF-8 characters split over several byte tokens come out once they are whole."""

    def __init__(self, tok: "ByteTokenizer") -> None:
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: list[int]) -> str:
        return self._utf8.decode(self._tok.to_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class ByteTokenizer:
    """Ids 0-255 are the bytes of UTF-8 text; BOS and EOS come from ModelArgs; other ids are a placeholder byte."""

    def __init__(self, args: ModelArgs) -> None:
        if args.vocab_size < 256:
            raise ValueError(f"{args.name}: vocab_size={args.vocab_size} is below 256, too small for the byte "
                             "tokenizer; give a checkpoint folder with a tokenizer.json")
        self.bos_token_id: int | None = args.bos_token_id
        self.eos_token_id: int | None = args.eos_token_id
        self.vocab_size = args.vocab_size
        self._special = {args.bos_token_id, args.eos_token_id}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def to_bytes(self, ids: list[int]) -> bytes:
        return b"".join(bytes((i,)) if 0 <= i < 256 else PLACEHOLDER_BYTE
                        for i in ids if i not in self._special)

    def decode(self, ids: list[int]) -> str:
        return self.to_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return _ByteStreamDecoder(self)


class _HFStreamDecoder:
    """Incremental detokenization (prefix/read offsets as in vLLM): emit text once it no longer ends mid-character."""

    def __init__(self, tok: "HFTokenizer") -> None:
        self._tok = tok
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # ids before this one are already emitted

    def push(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read])
        full_text = self._tok.decode(self._ids[self._prefix:])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""  # an unfinished character: wait for the next token
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text):]

    def flush(self) -> str:
        prefix_text = self._tok.decode(self._ids[self._prefix:self._read])
        full_text = self._tok.decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text):]


class HFTokenizer:
    """A checkpoint folder's tokenizer.json through the `tokenizers` library."""

    def __init__(self, path: Path, args: ModelArgs) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:
            raise ImportError(f"{path} has a tokenizer.json but the `tokenizers` package is missing; "
                              "pip install 'tokenizers>=0.19'") from exc
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as exc:  # the library raises its own exception type
            raise ValueError(f"{path}: cannot read tokenizer.json ({exc})") from exc
        self.bos_token_id = args.bos_token_id
        self.eos_token_id = args.eos_token_id
        self.vocab_size = args.vocab_size

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def stream_decoder(self) -> StreamDecoder:
        return _HFStreamDecoder(self)


def model_args_for(model_spec: str) -> ModelArgs:
    """ModelArgs of a preset name or of a checkpoint folder's config.json."""
    if model_spec in PRESETS:
        return ModelArgs.from_name(model_spec)
    config = Path(model_spec) / "config.json"
    if not config.is_file():
        raise ValueError(f"model {model_spec!r} is neither a preset ({sorted(PRESETS)}) nor a folder with "
                         "config.json")
    return ModelArgs.from_hf_config(json.loads(config.read_text()), name=Path(model_spec).name)


def get_tokenizer(model_spec: str, args: ModelArgs | None = None) -> Tokenizer:
    """The byte tokenizer for presets; a folder's tokenizer.json when it has one (bytes otherwise, with a note)."""
    args = args or model_args_for(model_spec)
    folder = Path(model_spec)
    if model_spec not in PRESETS and (folder / "tokenizer.json").is_file():
        return HFTokenizer(folder / "tokenizer.json", args)
    if model_spec not in PRESETS:
        print(f"tokenizer: {model_spec} has no tokenizer.json; using the byte tokenizer", file=sys.stderr)
    return ByteTokenizer(args)
