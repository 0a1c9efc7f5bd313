"""`harness model make`: a random-weight checkpoint with a byte-level tokenizer that transformers and the engines
load unmodified, and adapters made for it that record its path."""
from __future__ import annotations

import json

import pytest
import torch

from engines.adapters.synth import make_adapters
from engines.base import Request, SamplingParams
from engines.config import EngineConfig
from engines.model.checkpoint import load_args
from engines.model.config import ModelArgs
from engines.model.export import byte_tokenizer, export_checkpoint
from engines.registry import create_engine
from engines.tokenizer import ByteTokenizer, HFTokenizer, chat_prompt, get_tokenizer
from harness.cli import main

ARGS = ModelArgs.from_name("tiny")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny32"
    assert main(["model", "make", "--base", "tiny", "--set", "head_dim=32", "--dtype", "float32", str(out)]) == 0
    return out


def test_the_folder_holds_what_hugging_face_loaders_read(ckpt):
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    args = load_args(ckpt)
    assert (args.head_dim, args.dim, args.vocab_size, args.bos_token_id) == (32, 64, 512, 256)
    assert json.loads((ckpt / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_encodes_like_the_byte_tokenizer_and_every_id_decodes_to_text():
    tok = byte_tokenizer(ARGS)
    text = "héllo, wörld\n\t{}"
    assert tok.encode(text).ids == ByteTokenizer(ARGS).encode(text)  # BOS first, then the UTF-8 bytes
    assert tok.encode(text, add_special_tokens=False).ids == list(text.encode())
    assert tok.decode(list(b"plain ascii")) == "plain ascii"
    assert tok.get_vocab_size() == ARGS.vocab_size
    texts = [tok.decode([i]) for i in range(ARGS.vocab_size) if i not in (ARGS.bos_token_id, ARGS.eos_token_id)]
    assert all(texts)  # a streaming server never holds a token back as an unfinished character
    assert tok.decode([ARGS.bos_token_id, 104, ARGS.eos_token_id]) == "h"


def test_transformers_greedy_equals_the_multilora_engine_on_the_checkpoint(ckpt):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(ckpt)
    assert hf_tok("hi").input_ids == [256, 104, 105]
    assert hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      add_generation_prompt=True) == chat_prompt([{"role": "user", "content": "hi"}])
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
    prompt = [256, 72, 101, 108, 108, 111]
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, len(prompt):]
    eng = create_engine(EngineConfig(model=str(ckpt), device="cpu", dtype="float32"))
    eng.add_request(Request("r", prompt, None, SamplingParams(max_tokens=8, ignore_eos=True)))
    got = []
    while eng.has_unfinished():
        got += [t for out in eng.step() for t in out.new_token_ids]
    assert got == hf.tolist()
    assert isinstance(get_tokenizer(str(ckpt)), HFTokenizer)


def test_adapters_for_a_checkpoint_record_its_path(ckpt, tmp_path):
    assert main(["adapters", "make", "--base", str(ckpt), "--count", "1", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "adapter-0000" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(ckpt.resolve())
    moved = make_adapters(load_args(ckpt), 1, [8], ["q_proj"], tmp_path / "b", base_path="/elsewhere/base")
    assert json.loads((moved[0] / "adapter_config.json").read_text())["base_model_name_or_path"] == "/elsewhere/base"
    again = make_adapters(load_args(ckpt), 1, [8], ["q_proj"], tmp_path / "b", base_path="/new/base")
    assert json.loads((again[0] / "adapter_config.json").read_text())["base_model_name_or_path"] == "/new/base"
    preset = make_adapters(ARGS, 1, [8], ["q_proj"], tmp_path / "c")
    assert json.loads((preset[0] / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"


@pytest.mark.parametrize("argv, message", [
    (["--base", "nope"], "--base: 'nope' is not a preset"),
    (["--base", "tiny", "--set", "colour=3"], "--set colour=3: 'colour' is not a shape field"),
    (["--base", "tiny", "--set", "dim=big"], "'big' is not an integer"),
    (["--base", "tiny", "--set", "n_kv_heads=3"], "not a multiple of n_kv_heads=3"),
    (["--base", "tiny", "--set", "vocab_size=200"], "vocab_size=200 is below 258"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main(["model", "make", *argv, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_export_refuses_specials_outside_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="must lie in"):
        export_checkpoint(ModelArgs(name="x", dim=64, n_layers=1, n_heads=4, n_kv_heads=2, intermediate_size=64,
                                    vocab_size=300, bos_token_id=1, eos_token_id=2), tmp_path / "x")
