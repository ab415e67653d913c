"""The one decode loop: a completion is the same alone, in a batch and streamed; rows that cannot
share a padded batch (past the context window, the rnn) go alone through the same loop."""

from __future__ import annotations

import pytest

from aigc_cli.config import GenerateConfig
from aigc_cli.inference.text_decoding import decode, logits_processors, sample_texts, stop_cut
from tests.inference.conftest import text_model

# Different lengths (most rows padded), an empty prompt, multi-byte characters.
PROMPTS = ["To be, or not to be", "", "Whe", "床前明月光，", "The slings and arrows of", "Ü"]
SETTINGS = {
    "sampled": GenerateConfig(max_new_tokens=10, temperature=1.0, top_k=20, repetition_penalty=1.3),
    "nucleus": GenerateConfig(max_new_tokens=10, temperature=0.7, top_k=None, top_p=0.9),
    "greedy_stops": GenerateConfig(max_new_tokens=10, temperature=0, stop=[" ", "e", "o", "，"]),
}
SEEDS = list(range(101, 101 + len(PROMPTS)))


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_completion_is_the_same_alone_batched_and_streamed(architecture, setting):
    loaded, gc = text_model(architecture=architecture), SETTINGS[setting]
    together = sample_texts(loaded, PROMPTS, gc, SEEDS)
    alone = [sample_texts(loaded, [prompt], gc, [seed])[0] for prompt, seed in zip(PROMPTS, SEEDS)]
    assert together == alone
    for prompt, seed, completion in zip(PROMPTS, SEEDS, alone):
        assert sample_texts(loaded, [prompt], gc, [seed], on_text=lambda piece: None) == [completion]
    assert len({c.text for c in together}) > 1  # the rows differ: the check compares something
    if setting == "greedy_stops" and architecture == "gpt2":  # (the random llama's greedy text holds none of them)
        assert any(c.finish_reason == "stop" for c in together)


def test_the_streamed_pieces_make_the_completion(gpt2):
    # A random model draws mostly byte tokens, whose text changes as later bytes arrive; without
    # them every piece is final.
    import torch

    from transformers.generation.logits_process import LogitsProcessor

    class NoByteTokens(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores[:, 1:257] = -torch.inf  # the char tokenizer's byte-fallback ids
            return scores

    gc = SETTINGS["sampled"].model_copy(update={"max_new_tokens": 16})
    processors = logits_processors(gc)
    processors.append(NoByteTokens())
    for seed, prompt in enumerate(["To be", "", "床前"]):
        row = gpt2.tokenizer.encode(prompt, add_special_tokens=False).ids or [gpt2.eos_id]
        pieces: list[str] = []
        [streamed] = decode(gpt2, [row], gc, [seed], processors, on_text=pieces.append)
        assert decode(gpt2, [row], gc, [seed], processors) == [streamed]
        assert "".join(pieces) == streamed.text and len(pieces) == streamed.new_tokens > 1


def test_greedy_decoding_is_the_argmax_of_a_full_forward(gpt2):
    # An independent computation: no cache, no padding, the whole sequence re-encoded every step.
    import torch

    gc = GenerateConfig(max_new_tokens=8, temperature=0)
    tok = gpt2.tokenizer
    for prompt in ["To be", "床前"]:
        ids = tok.encode(prompt, add_special_tokens=False).ids
        expected = []
        with torch.no_grad():
            for _ in range(gc.max_new_tokens):
                next_id = int(gpt2.model(input_ids=torch.tensor([ids + expected])).logits[0, -1].argmax())
                if next_id == gpt2.eos_id:
                    break
                expected.append(next_id)
        [completion] = sample_texts(gpt2, [prompt, "x"], gc, [1, 2])[:1]
        assert completion.text == tok.decode(expected) and completion.new_tokens == len(expected)


def test_decoding_ends_at_any_of_the_stop_ids_alone_and_batched(gpt2):
    # A chat model ends its turn with an end-of-turn token (generation_config.json's eos_token_id
    # list) as well as at end-of-text: here a token greedy decoding draws stands for it.
    import dataclasses

    import torch

    gc = GenerateConfig(max_new_tokens=8, temperature=0, repetition_penalty=3.0)  # (a random model would repeat one token)
    processors, greedy = logits_processors(gc), []
    with torch.no_grad():
        for prompt in ["To be", "床前"]:
            ids = gpt2.tokenizer.encode(prompt, add_special_tokens=False).ids
            for _ in range(gc.max_new_tokens):
                ids.append(int(processors(torch.tensor([ids]), gpt2.model(input_ids=torch.tensor([ids])).logits[:, -1]).argmax()))
            greedy.append(ids[-gc.max_new_tokens:])
    end_of_turn = greedy[0][3]
    assert greedy[0].index(end_of_turn) > 0 and end_of_turn != gpt2.eos_id
    chat_model = dataclasses.replace(gpt2, stop_ids=(gpt2.eos_id, end_of_turn))
    expected = [row[:row.index(end_of_turn)] if end_of_turn in row else row for row in greedy]
    for completions in (sample_texts(chat_model, ["To be", "床前"], gc, [1, 2]),
                        [sample_texts(chat_model, [p], gc, [s], on_text=lambda piece: None)[0] for p, s in [("To be", 1), ("床前", 2)]]):
        assert [c.new_tokens for c in completions] == [len(row) for row in expected]
        assert completions[0].finish_reason == "eos" and completions[0].new_tokens == greedy[0].index(end_of_turn)
        assert [c.text for c in completions] == [gpt2.tokenizer.decode(row) for row in expected]


def test_rows_past_the_context_window_go_alone_through_the_same_loop():
    loaded = text_model(context=16)
    gc = GenerateConfig(max_new_tokens=12, temperature=1.0, top_k=None)
    prompts = ["a", "To be, or not", "Wh", "床"]  # 13 + 12 > 16: that row needs the sliding re-encode
    seeds = [5, 6, 7, 8]
    processors = logits_processors(gc)
    rows = [loaded.tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    short = decode(loaded, [rows[i] for i in (0, 2, 3)], gc, [seeds[i] for i in (0, 2, 3)], processors)
    long = decode(loaded, [rows[1]], gc, [seeds[1]], processors)
    assert sample_texts(loaded, prompts, gc, seeds) == [short[0], long[0], short[1], short[2]]
    assert long[0].new_tokens == 12 or long[0].finish_reason == "eos"  # past the window, decoding went on


def test_the_rnn_decodes_one_row_at_a_time():
    loaded = text_model("rnn")
    gc = SETTINGS["sampled"]
    together = sample_texts(loaded, PROMPTS, gc, SEEDS)
    assert together == [sample_texts(loaded, [p], gc, [s])[0] for p, s in zip(PROMPTS, SEEDS)]


def test_streaming_takes_one_prompt(gpt2):
    with pytest.raises(ValueError):
        sample_texts(gpt2, ["a", "b"], SETTINGS["sampled"], [1, 2], on_text=print)


def test_stop_cut_finds_the_earliest_stop_string():
    assert stop_cut("hello world", ["o", "l"]) == 2
    assert stop_cut("hello", ["x", ""]) == -1  # an empty stop string never matches
    assert stop_cut("hello", []) == -1
