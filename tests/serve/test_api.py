"""aigc_cli/serve/api.py in-process (starlette's TestClient, the app's lifespan included): what a
subprocess cannot be made to do on demand — a model that fails while decoding — and a checkpoint
without a chat template."""

from __future__ import annotations

import dataclasses
import json

import pytest
from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def served(plain_run):
    from aigc_cli.runs.checkpoints import resolve_checkpoint
    from aigc_cli.serve.server import _load_app

    app, worker = _load_app(resolve_checkpoint(plain_run), "plain", None, 8, "cpu", lambda _: None)
    real = worker.loaded.backend

    class Poisoned:  # the real backend, whose forward fails on a prompt holding "Ü"
        poison = worker.loaded.tokenizer.token_to_id("Ü")

        def __getattr__(self, name):
            return getattr(real, name)

        def padded_next_token_logits(self, model, ids, mask, state):
            if state is None and bool((ids == self.poison).any()):
                raise RuntimeError("the model broke")
            return real.padded_next_token_logits(model, ids, mask, state)

    worker.loaded = dataclasses.replace(worker.loaded, backend=Poisoned())
    with TestClient(app) as client:
        yield client


def test_a_failure_while_decoding_is_a_500_for_that_request_and_the_server_keeps_serving(served):
    broken = served.post("/v1/completions", json={"model": "plain", "prompt": "Ü", "max_tokens": 3})
    assert broken.status_code == 500
    assert broken.json() == {"error": {"message": "decoding failed: RuntimeError: the model broke", "type": "server_error",
                                       "param": None, "code": None}}
    with served.stream("POST", "/v1/completions", json={"model": "plain", "prompt": "Ü", "max_tokens": 3, "stream": True}) as answer:
        events = [json.loads(line.removeprefix("data: ")) for line in answer.iter_lines() if line]
    assert events[-1]["error"]["type"] == "server_error"  # the openai client raises APIError on it
    fine = served.post("/v1/completions", json={"model": "plain", "prompt": "To be", "max_tokens": 3})
    assert fine.status_code == 200 and fine.json()["usage"]["completion_tokens"] <= 3
    assert served.get("/health").json()["requests"]["failed"] == 2


def test_a_checkpoint_without_a_chat_template_refuses_chat_requests(served):
    answer = served.post("/v1/chat/completions", json={"model": "plain", "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "no_chat_template" and "has no chat template" in error["message"] and error["param"] == "messages"


def test_unknown_routes_and_methods_answer_in_openais_shape(served):
    missing = served.get("/v1/engines")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Unknown request URL: GET /v1/engines"
    wrong = served.get("/v1/completions")
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == {"message", "type", "param", "code"}
