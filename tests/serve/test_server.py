"""`aigc serve` as a user runs it: a real server process on 127.0.0.1 and the official `openai`
client against it — completions, chat, streaming, errors, API key, seeded determinism under a
32-client load, and SIGTERM in the middle of a stream (the last test: it stops the server)."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.serve.conftest import CONTEXT, Server, wait_for_exit

KEY = "sk-test-key"
MODEL = "run"  # the name of the directory served


@pytest.fixture(scope="module")
def server(chat_run):
    running = Server(chat_run, "--api-key", KEY, "--max-batch", "32")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer(chat_run):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(next((chat_run / "checkpoints").glob("step-*")) / "tokenizer.json"))


def raw(server, path: str, body, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers=headers, timeout=60)


def test_models_lists_the_checkpoint_and_other_names_are_not_found(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as refused:
        client.completions.create(model="gpt-4o", prompt="To be", max_tokens=2)
    assert refused.value.status_code == 404 and refused.value.code == "model_not_found" and refused.value.param == "model"


def test_completion_counts_tokens_stops_and_streams_the_same_text(client, tokenizer):
    settings = dict(model=MODEL, prompt="To be", max_tokens=7, seed=5, temperature=0.9, top_p=0.95)
    done = client.completions.create(**settings)
    choice = done.choices[0]
    assert done.object == "text_completion" and done.model == MODEL
    assert done.usage.prompt_tokens == len(tokenizer.encode("To be", add_special_tokens=False).ids) == 5
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert (choice.finish_reason, done.usage.completion_tokens) == ("length", 7) or choice.finish_reason == "stop"
    chunks = list(client.completions.create(**settings, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason

    sampled = dict(model=MODEL, prompt="Whe", max_tokens=12, temperature=0.7, seed=1)
    free = client.completions.create(**sampled).choices[0].text
    # A character of the vocabulary the completion first holds at position i > 0, as a stop string: the text ends before it.
    stop = next(c for i, c in enumerate(free) if i > 0 and tokenizer.token_to_id(c) is not None and free.find(c) == i)
    for stream in (False, True):
        cut = client.completions.create(**sampled, stop=["@@", stop], stream=stream)
        pieces = list(cut) if stream else [cut]
        assert "".join(p.choices[0].text for p in pieces) == free[:free.find(stop)]
        assert pieces[-1].choices[0].finish_reason == "stop"


def test_chat_formats_with_the_checkpoints_template_and_streams(client, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be, or not to be?"}]
    prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
    settings = dict(model=MODEL, max_tokens=9, seed=11, temperature=0.8)
    chat = client.chat.completions.create(messages=messages, **settings)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False).ids)
    # The chat request is the completion of the template's text: same prompt, same seed, same words.
    assert client.completions.create(prompt=prompt, **settings).choices[0].text == chat.choices[0].message.content
    chunks = list(client.chat.completions.create(messages=messages, stream=True, stream_options={"include_usage": True}, **settings))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == chat.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


OK_PROMPT = {"model": MODEL, "prompt": "To be", "max_tokens": 2}
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
BAD_REQUESTS = {  # name: (path, body, param, code)
    "malformed JSON": ("/completions", '{"model": "run", "prompt": ', None, None),
    "not an object": ("/completions", "[1, 2]", None, None),
    "wrong type": ("/completions", {**OK_PROMPT, "max_tokens": "2"}, "max_tokens", "invalid_type"),
    "wrong type in a list": ("/completions", {**OK_PROMPT, "stop": ["a", 3]}, "stop", "invalid_type"),
    "out of range": ("/completions", {**OK_PROMPT, "temperature": 2.5}, "temperature", "invalid_value"),
    "missing field": ("/completions", {"model": MODEL, "max_tokens": 2}, "prompt", "missing_required_parameter"),
    "empty messages": ("/chat/completions", {**OK_CHAT, "messages": []}, "messages", "invalid_value"),
    "unknown role": ("/chat/completions", {**OK_CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "invalid_value"),
    "over the context": ("/completions", {**OK_PROMPT, "max_tokens": CONTEXT}, "max_tokens", "context_length_exceeded"),
    "chat over the context": ("/chat/completions", {**OK_CHAT, "max_tokens": CONTEXT - 5}, "max_tokens", "context_length_exceeded"),
    "n > 1": ("/completions", {**OK_PROMPT, "n": 2}, "n", "unsupported_value"),
    "unsupported option": ("/chat/completions", {**OK_CHAT, "presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_requests_get_a_400_in_openais_shape(server, name):
    path, body, param, code = BAD_REQUESTS[name]
    answer = raw(server, path, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code) and error["message"]


def test_the_client_sees_a_bad_request_error_and_neutral_options_are_accepted(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="To be", max_tokens=CONTEXT * 2)
    assert refused.value.code == "context_length_exceeded" and f"maximum context length is {CONTEXT} tokens" in refused.value.message
    done = client.completions.create(model=MODEL, prompt="x", max_tokens=2, presence_penalty=0, frequency_penalty=0, n=1)
    assert done.usage.completion_tokens <= 2


def test_api_key_is_required_on_v1_only(server):
    wrong = openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    missing = raw(server, "/completions", '{"not even": "valid"', key=None)  # the key is checked first
    assert missing.status_code == 401 and "No API key provided" in missing.json()["error"]["message"]
    assert httpx.get(server.url.removesuffix("/v1") + "/health").json()["status"] == "ok"


def _request(client, i: int) -> tuple[str, str, int, int]:
    """Client i's request (completions or chat, streamed or not, its own length, seed and sampling):
    its text, finish_reason, completion tokens, and the max_tokens it asked for."""
    settings = dict(model=MODEL, max_tokens=3 + i % 13, seed=1000 + i, temperature=(0.0, 0.7, 1.0, 1.3)[i % 4], top_p=(1.0, 0.9)[i % 2])
    stream = i % 3 == 0
    if stream:
        settings.update(stream=True, stream_options={"include_usage": True})
    if i % 2:
        answer = client.chat.completions.create(messages=[{"role": "user", "content": f"Line {i}: to be"}], **settings)
        text_of = (lambda c: c.delta.content or "") if stream else (lambda c: c.message.content)
    else:
        answer = client.completions.create(prompt=f"The slings {i}", **settings)
        text_of = lambda c: c.text  # noqa: E731
    responses = list(answer) if stream else [answer]
    choices = [r.choices[0] for r in responses if r.choices]  # the usage chunk has none
    return "".join(map(text_of, choices)), choices[-1].finish_reason, responses[-1].usage.completion_tokens, settings["max_tokens"]


def test_32_concurrent_clients_all_get_what_they_asked_for_and_seeded_text_does_not_change(server, client):
    alone = {i: _request(client, i) for i in (0, 1, 6, 7, 30)}
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda i: _request(client, i), range(32)))
    for i, (text, reason, tokens, max_tokens) in enumerate(together):
        # max_tokens reached, or an end id came before it (it is not counted)
        assert (reason, tokens) == ("length", max_tokens) or (reason == "stop" and tokens < max_tokens), (i, reason, tokens)
    assert {i: together[i] for i in alone} == alone
    health = httpx.get(server.url.removesuffix("/v1") + "/health").json()
    assert health["peak_batch"] > 1 and health["requests"]["failed"] == 0  # they were decoded together


def test_sigterm_during_a_stream_finishes_it_and_the_server_exits_0(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 60, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as answer:
        lines = answer.iter_lines()
        first = next(line for line in lines if line)
        assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        server.proc.send_signal(signal.SIGTERM)
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"  # the request in flight was finished, not cut off
    usage = json.loads(rest[-2].removeprefix("data: "))["usage"]
    finish = [json.loads(line.removeprefix("data: "))["choices"] for line in rest[:-2]][-1][0]["finish_reason"]
    assert finish == "stop" or usage["completion_tokens"] == 60
    assert wait_for_exit(server.proc) == 0, server.stderr()
    assert "stopped by SIGTERM" in server.proc.stdout.read()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/models", timeout=5)
