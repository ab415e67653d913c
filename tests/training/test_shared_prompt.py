"""Shared-prompt preference rows: one [prompt | chosen | rejected] row per pair (data/chat_examples.
shared_prompt_rows) with a 4D attention mask (training/preference.shared_prompt_mask) must score
every reply exactly as the [2B, T] layout does, give the same gradients, and the DPO loss TRL's."""

from __future__ import annotations

import copy

import pytest
import torch

from aigc_cli.config import PreferenceConfig
from aigc_cli.data.chat import PreferencePair
from aigc_cli.data.chat_examples import CHOSEN, PADDING, REJECTED, SHARED, PreferenceExamples, prepare_chat_template, shared_prompt_rows
from aigc_cli.data.packing import IGNORE_INDEX
from aigc_cli.training import loss_stats
from aigc_cli.training.preference import frozen_reference, pair_logps, preference_loss_fn, shares_prompts

from tests.training.test_preference import (
    PAIRS, VOCAB, PreferenceBatches, assert_same, nudged, tiny_gpt2, trl_dpo, with_adapters,
)


def unshifted(pairs):
    return [((p + c, [IGNORE_INDEX] * len(p) + c), (p + r, [IGNORE_INDEX] * len(p) + r)) for p, c, r in pairs]


def tiny_llama(attention: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32)
    config._attn_implementation = attention
    return LlamaForCausalLM(config)


def test_rows_hold_the_prompt_once_then_each_reply_at_its_own_positions():
    (ids, positions, segments), targets = shared_prompt_rows(unshifted(PAIRS), pad_id=0)  # 9 wide: pair 2's row
    # Pair 0: prompt [5, 6, 7], chosen [10, 11, 12, 2], rejected [13, 2]. The last prompt token's
    # target is the reply's first token, different per reply: it goes into each reply's part.
    assert ids[0].tolist() == [5, 6, 7, 10, 11, 12, 7, 13, 0]
    assert positions[0].tolist() == [0, 1, 2, 3, 4, 5, 2, 3, 0]
    assert segments[0].tolist() == [SHARED] * 2 + [CHOSEN] * 4 + [REJECTED] * 2 + [PADDING]
    assert targets[0].tolist() == [IGNORE_INDEX] * 2 + [10, 11, 12, 2, 13, 2, IGNORE_INDEX]
    assert ids[1].tolist() == [8, 9, 14, 9, 15, 16, 17, 18, 0] and positions[1].tolist() == [0, 1, 2, 1, 2, 3, 4, 5, 0]
    assert ids[2].tolist() == [20, 21, 22, 23, 24, 25, 23, 26, 27] and (segments[2] != PADDING).all()


def test_a_reply_starting_like_the_other_is_still_scored_in_full():
    # The replies share their first token (11): shared inputs stop before the first scored target.
    pairs = [([5, 6], [11, 12, 2], [11, 13, 14, 2])]
    (ids, positions, segments), targets = shared_prompt_rows(unshifted(pairs), pad_id=0)
    assert ids[0].tolist() == [5, 6, 11, 12, 6, 11, 13, 14]
    assert targets[0].tolist() == [IGNORE_INDEX, 11, 12, 2, 11, 13, 14, 2]
    assert segments[0].tolist() == [SHARED, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED, REJECTED, REJECTED]


def _both_ways(model, pairs=PAIRS):
    separate = pair_logps(model, *PreferenceBatches(pairs).batch(range(len(pairs))))
    shared = pair_logps(model, *shared_prompt_rows(unshifted(pairs), pad_id=0))
    return separate, shared


def eager(model):
    model.config._attn_implementation = "eager"
    return model


@pytest.mark.parametrize("make", [tiny_gpt2, lambda: eager(tiny_gpt2()), lambda: with_adapters(tiny_gpt2()), tiny_llama,
                                  lambda: tiny_llama("eager")], ids=["gpt2", "gpt2-eager", "gpt2-lora", "llama-sdpa", "llama-eager"])
def test_log_probs_and_gradients_equal_the_separate_rows(make):
    model = make()
    (separate, separate_tokens), (shared, shared_tokens) = _both_ways(model)
    assert shared_tokens.tolist() == separate_tokens.tolist() == [4, 2, 3, 2, 5, 3]
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=0)
    weights = torch.arange(1.0, 7.0)  # a loss that weighs every reply differently
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.autograd.grad((weights * logps).sum(), trained) for logps in (separate, shared)]
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_scores_close_to_the_separate_rows():
    model = with_adapters(tiny_gpt2())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (separate, _), (shared, _) = _both_ways(model)
    torch.testing.assert_close(shared, separate, atol=0.05, rtol=0.01)  # bf16 rounding only


def _ours_shared(pc, method, model, reference):
    with loss_stats.collect() as reported:
        loss = preference_loss_fn(pc, method, reference)(model, shared_prompt_rows(unshifted(PAIRS), pad_id=0), "model")
    return loss, {name: values[0] for name, values in reported.items()}


def test_dpo_on_shared_rows_under_lora_equals_trl():
    model = with_adapters(tiny_gpt2())
    loss, stats = _ours_shared(PreferenceConfig(beta=0.5), "dpo", model, None)
    assert_same(loss, stats, *trl_dpo(model, None, "sigmoid", 0.5))
    assert float(stats["rewards/margins"]) != 0


@pytest.mark.parametrize("loss_type, trl_loss_type", [("sigmoid", "sigmoid"), ("ipo", "ipo")])
def test_dpo_on_shared_rows_with_a_frozen_reference_equals_trl(loss_type, trl_loss_type):
    base = tiny_gpt2()
    policy, reference = nudged(base), frozen_reference(base)
    loss, stats = _ours_shared(PreferenceConfig(loss_type=loss_type, beta=0.3), "dpo", policy, reference)
    assert_same(loss, stats, *trl_dpo(policy, reference, trl_loss_type, 0.3))


def test_the_probe_accepts_sdpa_and_eager_and_refuses_a_model_ignoring_the_mask():
    from transformers import GPT2LMHeadModel

    class IgnoresTheMask(GPT2LMHeadModel):
        def forward(self, *args, attention_mask=None, **kwargs):
            return super().forward(*args, **kwargs)

    assert shares_prompts(tiny_gpt2()) and shares_prompts(tiny_llama()) and shares_prompts(tiny_llama("eager"))
    blind = IgnoresTheMask(copy.deepcopy(tiny_gpt2().config))
    assert not shares_prompts(blind)
    assert blind.training  # the probe leaves the mode as it found it


def test_preference_examples_with_a_shared_prompt_score_what_the_padded_batch_does():
    from transformers import PreTrainedTokenizerFast

    from aigc_cli.data.tokenization import build_char_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=build_char_tokenizer("abcdefghijklmnopqrstuvwxyz?.! \n"), eos_token="<|endoftext|>")
    template = prepare_chat_template(tok, "chatml")
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    pairs = [PreferencePair(prompt, [{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "no"}], "p:1"),
             PreferencePair(prompt[1:], [{"role": "assistant", "content": "ok"}], [{"role": "assistant", "content": "go away"}], "p:2")]
    padded_rows = PreferenceExamples(pairs, tok, template, 200, tok.eos_token_id)
    shared_rows = PreferenceExamples(pairs, tok, template, 200, tok.eos_token_id, shared_prompt=True)
    (ids, positions, segments), targets = shared_rows.batch([0, 1])
    assert ids.shape[0] == 2
    learned = [tok.decode([t for t, s in zip(row.tolist(), seg.tolist()) if t != IGNORE_INDEX and s == part])
               for part in (CHOSEN, REJECTED) for row, seg in zip(targets, segments)]
    assert learned == ["hello<|im_end|>", "ok<|im_end|>", "no<|im_end|>", "go away<|im_end|>"]
    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    assert ids[0, :len(prompt_ids) - 1].tolist() == prompt_ids[:-1] and (segments[0, :len(prompt_ids) - 1] == SHARED).all()
    assert ids.numel() < padded_rows.batch([0, 1])[0].numel()  # the prompts are in the batch once, not twice
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=2, n_head=2))
    model.eval()
    with torch.no_grad():
        separate, separate_tokens = pair_logps(model, *padded_rows.batch([0, 1]))
        shared, shared_tokens = pair_logps(model, *shared_rows.batch([0, 1]))
    assert shared_tokens.tolist() == separate_tokens.tolist()
    torch.testing.assert_close(shared, separate, atol=1e-5, rtol=0)


def test_finetune_shares_prompts_on_aigc_models_and_says_when_it_cannot(capsys):
    from transformers import GPT2LMHeadModel

    from aigc_cli.backends import GPTModelConfig, gpt
    from aigc_cli.training.finetune import _shared_prompt

    class IgnoresTheMask(GPT2LMHeadModel):
        def forward(self, *args, attention_mask=None, **kwargs):
            return super().forward(*args, **kwargs)

    for architecture in ("gpt2", "llama"):
        model = gpt.build(GPTModelConfig(architecture=architecture, n_layer=1, n_head=2, n_embd=16, block_size=32, dropout=0.0),
                          {"vocab_size": VOCAB, "eos_id": 2})
        assert _shared_prompt(model, quiet=False), architecture
    assert capsys.readouterr().err == ""
    assert not _shared_prompt(IgnoresTheMask(copy.deepcopy(tiny_gpt2().config)), quiet=False)
    assert "chosen and rejected are two padded rows each" in capsys.readouterr().err
