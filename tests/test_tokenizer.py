"""Byte tokenizer, tokenizer.json loading, streaming decode of split characters, chat template."""
from __future__ import annotations

import json

import pytest

from engines.model.config import ModelArgs
from engines.tokenizer import ByteTokenizer, HFTokenizer, chat_prompt, get_tokenizer, model_args_for


def test_byte_tokenizer_round_trip_and_specials():
    tok = get_tokenizer("tiny")
    assert isinstance(tok, ByteTokenizer)
    ids = tok.encode("héllo")
    assert ids[0] == 256 and ids[1:] == list("héllo".encode())  # BOS from the tiny preset
    assert tok.encode("a", add_bos=False) == [97]
    assert tok.decode(ids + [257]) == "héllo"  # BOS and EOS are not text
    assert tok.eos_token_id == 257 and tok.vocab_size == 512


def test_ids_beyond_bytes_decode_to_a_placeholder():
    tok = get_tokenizer("tiny")
    assert tok.decode([104, 300, 511, 105]) == "h??i"


def test_stream_decoder_waits_for_whole_utf8_characters():
    tok = get_tokenizer("tiny")
    dec = tok.stream_decoder()
    euro = list("€".encode())  # three bytes
    assert dec.push([euro[0]]) == ""
    assert dec.push([euro[1]]) == ""
    assert dec.push([euro[2], 97]) == "€a"
    assert dec.push([0xFF]) == "\ufffd"  # an invalid byte is replaced, not swallowed
    assert dec.flush() == ""


def test_large_presets_use_their_own_bos_eos():
    tok = get_tokenizer("llama3-8b")
    assert tok.bos_token_id == 128000 and tok.eos_token_id == 128001
    assert tok.encode("x")[0] == 128000


def test_tiny_vocab_refused_with_a_sentence():
    args = ModelArgs(name="toy", dim=8, n_layers=1, n_heads=1, n_kv_heads=1, intermediate_size=8, vocab_size=100)
    with pytest.raises(ValueError, match="too small for the byte tokenizer"):
        ByteTokenizer(args)


def test_unknown_model_spec_names_it(tmp_path):
    with pytest.raises(ValueError, match="neither a preset"):
        model_args_for(str(tmp_path / "nothing"))


def _word_level_tokenizer_json(path):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {"<s>": 0, "</s>": 1, "[UNK]": 2, "hello": 3, "world": 4, "café": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))


def test_checkpoint_folder_with_tokenizer_json(tmp_path):
    args = ModelArgs.from_name("tiny")
    cfg = args.to_hf_config()
    cfg.update(bos_token_id=0, eos_token_id=1)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _word_level_tokenizer_json(tmp_path)
    tok = get_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode("hello world café")
    assert ids == [0, 3, 4, 5]
    assert tok.decode(ids + [1]) == "hello world café"
    dec = tok.stream_decoder()
    streamed = "".join(dec.push([i]) for i in ids[1:]) + dec.flush()
    assert streamed == "hello world café"


def test_checkpoint_folder_without_tokenizer_json_falls_back_to_bytes(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(ModelArgs.from_name("tiny").to_hf_config()))
    tok = get_tokenizer(str(tmp_path))
    assert isinstance(tok, ByteTokenizer)
    assert "byte tokenizer" in capsys.readouterr().err


def test_chat_template():
    text = chat_prompt([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
