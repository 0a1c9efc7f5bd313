"""A request the sampler cannot serve fails alone: the streams beside it finish with the tokens they get without it."""
from __future__ import annotations

import concurrent.futures

import openai
import pytest

from engines.base import SamplingParams
from engines.config import EngineConfig
from engines.multilora.sampler import Sampler
from engines.registry import create_engine
from engines.server.app import build_app
from engines.server.runner import ServerThread
from engines.server.state import ServerOptions
from engines.tokenizer import get_tokenizer

POISON = [256, 7, 7, 7]  # the prompt the test engine poisons after validation
PROMPTS = [[256, 11, 22, 33, 44], [256, 200, 100, 50], [256, 5, 6, 7, 8, 9], [256, 90, 80]]
# the values, set after the request passed validation (as a bug in validation would let them in)
POISONS = {
    "seed-2**64": {"temperature": 0.7, "seed": 2**64},
    "temperature-1e-40-top-p-1e-46": {"temperature": 1e-40, "top_p": 1e-46, "seed": 1},
    "stop-id-10**30-min-tokens": {"stop_token_ids": (10**30, 5), "min_tokens": 1},
}


def _poisoning(engine, poison: dict | None):
    """Wrap engine.add_request: the POISON prompt's params get `poison` once the engine accepted them."""
    add = engine.add_request

    def add_request(request):
        add(request)
        if poison is not None and list(request.prompt_ids[:len(POISON)]) == POISON:
            for key, value in poison.items():
                setattr(request.params, key, value)

    engine.add_request = add_request


def _stream(client, prompt, body) -> tuple[str, list[int]]:
    try:
        chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, stream=True,
                                           extra_body={"ignore_eos": True, **body.get("extra", {})},
                                           **{k: v for k, v in body.items() if k != "extra"})
        return "ok", [t for c in chunks for t in c.choices[0].token_ids]
    except openai.APIError as exc:  # an error event in the stream
        return f"error: {exc}", []


def _round(url: str) -> dict[int, tuple[str, list[int]]]:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    jobs = [(p, {"temperature": 0}) for p in PROMPTS] + [(p, {"temperature": 0.8, "seed": 42 + i})
                                                         for i, p in enumerate(PROMPTS)]
    jobs.append((POISON, {"temperature": 0.7, "seed": 3}))
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: _stream(client, *job), jobs))
    return dict(enumerate(results))


@pytest.mark.parametrize("engine_name", ["multilora", "multilora-overlap", "merged", "peft"])
def test_a_poisoned_request_fails_alone_on_every_engine(engine_name):
    # multilora-overlap: steps launched before the one before is read (the CUDA default), forced on the CPU
    extra = {"overlap": True} if engine_name.endswith("-overlap") else {}
    engine = create_engine(EngineConfig(engine=engine_name.removesuffix("-overlap"), model="tiny", device="cpu",
                                        extra=extra))
    app = build_app(engine, get_tokenizer("tiny"), ServerOptions(model_aliases=("tiny",)))
    with ServerThread(app) as server:
        clean = _round(server.url)
        assert all(status == "ok" for status, _ in clean.values()), clean
        last = len(clean) - 1
        for name, poison in POISONS.items():
            _poisoning(engine, poison)
            got = _round(server.url)
            del engine.add_request  # back to the class's method
            for i in range(last):  # every other stream: complete, and the same tokens as without the poison
                assert got[i] == clean[i], (name, i, got[i], clean[i])
            if name == "seed-2**64":
                assert got[last][0].startswith("error") and "sampling failed" in got[last][0], got[last]
            assert not engine.has_unfinished()
            assert app_state_ok(app)


def app_state_ok(app, deadline_s: float = 30.0) -> bool:
    """No step failed, and every request left the server's books: a handler counts a request out after its
    last bytes are written, which the client may see first, so in-flight is polled until a deadline."""
    import time

    from engines.server.state import STATE

    state = app[STATE]
    end = time.monotonic() + deadline_s
    while state.metrics.in_flight != 0 and time.monotonic() < end:
        time.sleep(0.01)
    return state.thread.step_errors == 0 and state.metrics.in_flight == 0


def test_sampler_fails_only_the_row_it_cannot_sample():
    import torch

    logits = torch.randn(4, 50)
    params = [SamplingParams(temperature=0.7, seed=s) for s in range(4)]
    clean = Sampler(torch.device("cpu"))(logits.clone(), list("abcd"), params, [()] * 4)
    params[1].seed = 2**64
    params[2].temperature, params[2].top_p = 1e-40, 1e-46
    sampler = Sampler(torch.device("cpu"))
    got = sampler(logits.clone(), list("abcd"), params, [(), (), (), (10**30,)])
    assert got[1] is None and set(sampler.failures) == {"b"}
    assert got[0] == clean[0] and got[3] == clean[3]
    assert got[2] == int(logits[2].argmax())  # a vanishing temperature is greedy, not NaN
    nan_row = logits.clone()
    nan_row[0, 3] = float("nan")
    got = sampler(nan_row, list("abcd"), [SamplingParams()] * 4, [()] * 4)
    assert got[0] is None and got[1:] == logits[1:].argmax(-1).tolist()
