"""aigc_cli.data.packing: whole examples packed into rows, each with its own positions, and a
packed row computing exactly what its examples compute alone."""

from __future__ import annotations

import pytest
import torch

from aigc_cli.data.packing import IGNORE_INDEX, ExampleRows, pack_rows

EXAMPLES = [([1, 2, 3, 4, 5], [IGNORE_INDEX, 2, 3, 4, 5]), ([6, 7, 8], [IGNORE_INDEX, 7, 8]),
            ([9, 10, 11, 12], [IGNORE_INDEX, IGNORE_INDEX, 11, 12]), ([13, 14], [IGNORE_INDEX, 14])]


def test_rows_hold_whole_examples_best_fit_longest_first():
    lengths = [7, 3, 5, 2, 6, 1]
    rows = pack_rows(lengths, 8)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert rows == [[0, 5], [4, 3], [2, 1]] and pack_rows(lengths, 8) == rows  # deterministic


def tiny_models():
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    yield AutoModelForCausalLM.from_config(GPT2Config(vocab_size=32, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                                                      eos_token_id=0), attn_implementation="sdpa").eval()
    yield AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       max_position_embeddings=32, bos_token_id=0, eos_token_id=0), attn_implementation="sdpa").eval()


@pytest.mark.parametrize("model", list(tiny_models()), ids=["gpt2", "llama"])
def test_a_packed_row_computes_what_its_examples_compute_alone(model):
    from aigc_cli.backends import gpt

    rows = ExampleRows(EXAMPLES, pad_id=0, max_length=9, packing=True)
    assert len(rows) == 2
    (ids, positions), targets = rows.batch([0, 1])
    assert positions[0].tolist()[:4] == [0, 1, 2, 3]  # the first example's own positions
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        alone_losses, counted = 0.0, 0
        for r, pack in enumerate(rows.packs):
            offset = 0
            for k in pack:
                example_ids, example_labels = (torch.tensor([x]) for x in rows.rows[k])
                alone = model(input_ids=example_ids[:, :-1], use_cache=False).logits
                torch.testing.assert_close(packed[r, offset:offset + alone.size(1)], alone[0], atol=1e-5, rtol=1e-5)
                scored = int((example_labels[:, 1:] != IGNORE_INDEX).sum())
                alone_losses += gpt.loss(model, (example_ids[:, :-1], example_labels[:, 1:]), "model").item() * scored
                counted += scored
                offset += alone.size(1)
        # The backend's loss on the packed batch is the loss of every example alone, per scored token.
        assert gpt.loss(model, ((ids, positions), targets), "model").item() == pytest.approx(alone_losses / counted, abs=1e-5)
    assert gpt.separates_packed_examples(model)


def test_a_model_that_ignores_position_ids_is_not_packed():
    from transformers import GPT2Config, GPT2LMHeadModel

    from aigc_cli.backends import gpt

    class NoPositions(GPT2LMHeadModel):  # stands for an architecture that cannot tell packed examples apart
        def forward(self, input_ids=None, position_ids=None, **kwargs):
            return super().forward(input_ids=input_ids, **kwargs)

    model = NoPositions(GPT2Config(vocab_size=32, n_positions=32, n_embd=16, n_layer=1, n_head=2)).train()
    assert not gpt.separates_packed_examples(model)
    assert model.training  # the probe leaves the mode as it was


def test_unpacked_rows_and_truncation():
    rows = ExampleRows(EXAMPLES + [([1, 2, 3, 4, 5, 6, 7, 8], [IGNORE_INDEX] * 6 + [7, 8])], pad_id=0, max_length=4)
    assert rows.truncated == 1 and rows.dropped == 1  # cut to 5 tokens (4 inputs + 1), the last lost its labelled tokens
    inputs, targets = rows.batch([0, 1])
    assert inputs.tolist() == [[1, 2, 3, 4], [6, 7, 8, 0]] and targets.tolist() == [[2, 3, 4, 5], [7, 8, IGNORE_INDEX, IGNORE_INDEX]]


def test_pairs_pack_without_crossing_examples():
    from transformers import PreTrainedTokenizerFast

    from aigc_cli.data.pairs import PairExamples, PairRecord
    from aigc_cli.data.tokenization import build_char_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=build_char_tokenizer("abcxyz"), eos_token="<|endoftext|>")
    records = [PairRecord({"q": "ab", "a": "xy"}, "t:1"), PairRecord({"q": "c", "a": "z"}, "t:2")]
    examples = PairExamples(records, tok, "{q}", "a", max_length=16, eos_id=tok.eos_token_id, packing=True)
    (ids, positions), targets = examples.batch([0])
    assert positions[0].tolist() == [0, 1, 2, 3, 0, 1]
    # The last target of one example is its end-of-text, never the next example's first token.
    assert tok.decode([t for t in targets[0].tolist() if t != IGNORE_INDEX], skip_special_tokens=False) == "xy<|endoftext|>z<|endoftext|>"
