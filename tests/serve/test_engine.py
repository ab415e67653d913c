"""aigc_cli/serve/engine.py: the decode worker on tiny real models, in-process.

Every request keeps its own settings in the shared batch, and a seeded request writes the same
text alone, in a batch that starts together, and when it joins a batch mid-decode."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from aigc_cli.serve.engine import Delta, Failed, Finished, Job, Sampling, _safe_prefix
from tests.inference.conftest import text_model

PROMPTS = ["To be, or not", "Whe", "床前明月光，", "The slings and arrows of outrageous", "Ü", ""]


class Collected:
    """A job's events, as the HTTP side would receive them."""

    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if not isinstance(event, Delta):
            self.done.set()

    def result(self):
        assert self.done.wait(60), "the job never ended"
        return self.events[-1]

    def streamed(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))


def worker_for(loaded, end_ids=None, max_batch=8):
    from aigc_cli.serve.engine import DecodeWorker

    worker = DecodeWorker(loaded, max_batch, end_ids if end_ids is not None else {loaded.eos_id})
    worker.start()
    return worker


def submit(worker, prompt: str, sampling: Sampling, stream: bool = True) -> Collected:
    tok = worker.loaded.tokenizer
    ids = (tok.encode(prompt, add_special_tokens=False).ids if prompt else []) or [worker.loaded.eos_id]
    collected = Collected()
    collected.job = Job(ids, sampling, collected, stream=stream)
    worker.submit(collected.job)
    return collected


def settings(i: int) -> Sampling:
    """Different settings per row: greedy and sampled, nucleus, lengths, a stop string."""
    return Sampling(max_tokens=8 + 3 * i, temperature=(0.0, 1.0, 0.7)[i % 3], top_p=(1.0, 0.8)[i % 2], seed=100 + i,
                    stop=("e", "，") if i == 3 else ())


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def worker(request):
    w = worker_for(text_model(architecture=request.param, context=64))
    yield w
    w.stop()


def test_seeded_rows_are_the_same_alone_batched_and_joining_mid_decode(worker):
    alone = []
    for i, prompt in enumerate(PROMPTS):
        job = submit(worker, prompt, settings(i))
        alone.append(job.result())
        assert isinstance(alone[-1], Finished)
        assert job.streamed() == alone[-1].text  # the streamed pieces add up to the completion
    together = [submit(worker, p, settings(i)) for i, p in enumerate(PROMPTS)]
    assert [j.result() for j in together] == alone
    assert worker.peak_batch == len(PROMPTS)

    # The first request decodes alone for a few steps; the others join its batch while it runs.
    first = submit(worker, PROMPTS[0], dataclasses.replace(settings(0), max_tokens=40))
    start = worker.steps
    while worker.steps < start + 3 and not first.done.is_set():
        time.sleep(0.001)
    later = [submit(worker, p, settings(i)) for i, p in enumerate(PROMPTS) if i]
    assert [j.result() for j in later] == alone[1:]
    assert not first.done.is_set() or len(first.result().text) > 0  # it was still running when they joined
    alone_long = submit(worker, PROMPTS[0], dataclasses.replace(settings(0), max_tokens=40)).result()
    assert first.result() == alone_long
    assert [r.finish_reason for r in alone] == ["length"] * 3 + [alone[3].finish_reason] + ["length"] * 2
    for i, result in enumerate(alone):
        assert result.finish_reason == "stop" or result.completion_tokens == settings(i).max_tokens


def test_end_of_turn_ids_and_stop_strings_end_a_row_without_showing_them():
    loaded = text_model(context=64)
    tok = loaded.tokenizer
    plain = worker_for(loaded)
    greedy = Sampling(max_tokens=12, temperature=0.0)
    free = submit(plain, "To be", greedy).result()
    assert "\ufffd" not in free.text  # so encoding the text gives back the sampled ids
    tokens = tok.encode(free.text, add_special_tokens=False).ids
    # An id the greedy completion holds, first seen at position k, declared end-of-turn: the row ends before it.
    k, end = next((k, t) for k, t in enumerate(tokens) if k >= 2 and t not in tokens[:k])
    turns = worker_for(loaded, end_ids={loaded.eos_id, end})
    job = submit(turns, "To be", greedy)
    stopped = job.result()
    assert stopped.finish_reason == "stop" and stopped.completion_tokens == k
    assert stopped.text == tok.decode(tokens[:k]) and job.streamed() == stopped.text
    # A stop string from the middle of the completion: the text ends where it begins, streamed or not.
    stop = next(free.text[i:i + 2] for i in range(2, len(free.text) - 1) if free.text.find(free.text[i:i + 2]) == i)
    for stream in (True, False):
        job = submit(plain, "To be", Sampling(max_tokens=12, temperature=0.0, stop=(stop,)), stream=stream)
        cut = job.result()
        assert cut.finish_reason == "stop" and cut.text == free.text[:free.text.find(stop)]
        assert stop not in job.streamed() and job.streamed() == (cut.text if stream else "")
    plain.stop()
    turns.stop()


def test_a_request_that_breaks_the_model_fails_alone_and_the_worker_keeps_serving():
    loaded = text_model(context=64)
    poison = loaded.tokenizer.token_to_id("Ü")
    real = loaded.backend

    class Poisoned:  # the backend, whose forward fails on a prompt holding the poison token
        def __getattr__(self, name):
            return getattr(real, name)

        def padded_next_token_logits(self, model, ids, mask, state):
            if state is None and bool((ids == poison).any()):
                raise RuntimeError("poisoned prompt")
            return real.padded_next_token_logits(model, ids, mask, state)

    worker = worker_for(dataclasses.replace(loaded, backend=Poisoned()))
    running = submit(worker, "To be", Sampling(max_tokens=30, temperature=0.0))
    start = worker.steps
    while worker.steps < start + 2:
        time.sleep(0.001)
    # The poisoned prompt arrives with a healthy one: they are prefilled together, then apart.
    bad, good = submit(worker, "Ü", Sampling(max_tokens=5)), submit(worker, "Whe", Sampling(max_tokens=5, seed=3))
    failed = bad.result()
    assert isinstance(failed, Failed) and "poisoned prompt" in failed.message and failed.status == 500
    assert isinstance(good.result(), Finished) and isinstance(running.result(), Finished)
    assert running.result().completion_tokens == 30
    assert isinstance(submit(worker, "To", Sampling(max_tokens=3)).result(), Finished)
    assert worker.counts["failed"] == 1
    worker.stop()


def test_a_cancelled_row_leaves_the_batch_and_the_others_finish():
    worker = worker_for(text_model(context=64))
    gone = submit(worker, "To be", Sampling(max_tokens=50, temperature=0.0))
    stays = submit(worker, "Whe", Sampling(max_tokens=20, temperature=0.0))
    start = worker.steps
    while worker.steps < start + 2:
        time.sleep(0.001)
    gone.job.cancelled = True  # what the HTTP side does when the client disconnects
    assert stays.result().completion_tokens == 20
    assert worker.counts["cancelled"] == 1 and not gone.done.is_set()
    worker.stop()


def test_a_backend_without_padded_decoding_serves_one_request_at_a_time():
    worker = worker_for(text_model(backend="rnn", context=64))
    alone = [submit(worker, p, settings(i)).result() for i, p in enumerate(PROMPTS[:3])]
    together = [submit(worker, p, settings(i)) for i, p in enumerate(PROMPTS[:3])]
    assert [j.result() for j in together] == alone and worker.peak_batch == 1
    worker.stop()


def test_streaming_holds_back_what_may_still_become_a_stop_string_or_a_character():
    assert _safe_prefix("hello wor", ("world",)) == len("hello ")
    assert _safe_prefix("hello wor", ("xyz", "or!")) == len("hello w")
    assert _safe_prefix("abc\ufffd", ()) == 3
    assert _safe_prefix("abc", ("c", "")) == 3  # a one-character stop is found whole or not at all
