"""aigc_cli.data.chat_examples: chat templates, labels on exactly the assistant tokens (and the
end-of-turn token), truncation, packing, and preference batches."""

from __future__ import annotations

import pytest
import torch

from aigc_cli.data.chat import CHAT_TEMPLATES, Conversation, PreferencePair
from aigc_cli.data.chat_examples import ChatExamples, PreferenceExamples, conversation_labels, prepare_chat_template
from aigc_cli.data.packing import IGNORE_INDEX
from aigc_cli.errors import AigcError

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "why?"}, {"role": "assistant", "content": "because."}]


def char_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from aigc_cli.data.tokenization import build_char_tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=build_char_tokenizer("abcdefghijklmnopqrstuvwxyz?.! \n"), eos_token="<|endoftext|>")


def tagged(source: str) -> str:
    """A built-in template with transformers' {% generation %} tags around what an assistant turn
    should learn: transformers' own return_assistant_tokens_mask, an independent labelling."""
    end = {"chatml": "'<|im_end|>'", "llama3": "'<|eot_id|>'", "zephyr": "eos_token"}[source]
    head, _, tail = CHAT_TEMPLATES[source].partition(" + message['content'] + ")
    body = tail.split(" }}{% endfor %}")[0]  # end-of-turn token and what follows it
    after = body.removeprefix(end).removeprefix(" + ")
    return (head + " }}{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + " + end + " }}{% endgeneration %}"
            "{% else %}{{ message['content'] + " + end + " }}{% endif %}" + ("{{ " + after + " }}" if after else "")
            + "{% endfor %}" + CHAT_TEMPLATES[source].split("{% endfor %}")[1])


@pytest.mark.parametrize("name", list(CHAT_TEMPLATES))
def test_exactly_the_assistant_tokens_and_end_of_turn_carry_labels(name):
    tok = char_tokenizer()
    template = prepare_chat_template(tok, name)
    assert template.name == name and tok.chat_template == CHAT_TEMPLATES[name]
    ids, labels = conversation_labels(tok, template, MESSAGES, "assistant", "t:1")
    expected = tok.apply_chat_template(MESSAGES, chat_template=tagged(name), return_assistant_tokens_mask=True)
    assert ids == expected["input_ids"]
    assert [t != IGNORE_INDEX for t in labels] == [bool(m) for m in expected["assistant_masks"]]
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(ids, labels))
    eot = tok.convert_ids_to_tokens(template.end_of_turn_id)
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == f"hello{eot}because.{eot}"


def test_last_assistant_and_all():
    tok = char_tokenizer()
    template = prepare_chat_template(tok, "chatml")
    ids, labels = conversation_labels(tok, template, MESSAGES, "last_assistant", "t:1")
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "because.<|im_end|>"
    ids, labels = conversation_labels(tok, template, MESSAGES, "all", "t:1")
    assert labels == ids


def test_template_tokens_are_added_once_and_ids_match_the_checkpoint_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = char_tokenizer()
    before = len(tok)
    template = prepare_chat_template(tok, "chatml")
    assert len(tok) == before + 2 and template.added_ids == [before, before + 1]
    assert tok.convert_ids_to_tokens(template.end_of_turn_id) == "<|im_end|>"
    tok.save_pretrained(tmp_path, save_jinja_files=False)
    again = AutoTokenizer.from_pretrained(tmp_path)
    # A tokenizer that has the template keeps it, and needs no new tokens.
    assert prepare_chat_template(again, "llama3").added_ids == [] and again.chat_template == CHAT_TEMPLATES["chatml"]
    assert again.apply_chat_template(MESSAGES[:4], add_generation_prompt=True)["input_ids"] == \
        tok.apply_chat_template(MESSAGES[:4], add_generation_prompt=True)["input_ids"]


def test_a_template_that_is_not_prefix_stable_is_refused_unless_only_the_last_turn_is_learned():
    tok = char_tokenizer()
    # Like templates that drop earlier reasoning: a reply renders shorter once more turns follow.
    tok.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' }}{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}"
                         "{% endif %}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
    template = prepare_chat_template(tok, "chatml")
    assert template.name == "the base tokenizer's"
    with pytest.raises(AigcError, match="^t:7: the base tokenizer's chat template is not prefix-stable: turn 2 renders differently") as caught:
        conversation_labels(tok, template, MESSAGES, "assistant", "t:7")
    assert "train_on=last_assistant" in caught.value.hint
    _, labels = conversation_labels(tok, template, MESSAGES, "last_assistant", "t:7")
    assert tok.decode([t for t in labels if t != IGNORE_INDEX]) == "because.<|endoftext|>"


def test_templates_without_an_end_token_or_refusing_a_conversation():
    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(AigcError, match="ends an assistant turn with no special token"):
        prepare_chat_template(tok, "chatml")
    tok = char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}"
                         "{{ m['content'] + eos_token }}{% endfor %}")
    template = prepare_chat_template(tok, "chatml")
    with pytest.raises(AigcError, match=r"^t:3: the base tokenizer's chat template refuses this conversation \(no system messages\)"):
        conversation_labels(tok, template, MESSAGES, "assistant", "t:3")


def test_truncation_cuts_from_the_end_and_drops_what_has_no_label_left():
    tok = char_tokenizer()
    template = prepare_chat_template(tok, "chatml")
    ids, labels = conversation_labels(tok, template, MESSAGES, "assistant", "t:1")
    first_label = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    short = [Conversation(MESSAGES[1:3], "t:2")]  # one turn: fits
    cut = first_label + 3  # keeps the first three tokens of "hello" and nothing after
    examples = ChatExamples([Conversation(MESSAGES, "t:1")] + short, tok, template, "assistant", cut - 1, tok.eos_token_id)
    assert examples.truncated == 1 and examples.dropped == 0 and len(examples) == 2
    inputs, targets = examples.batch([0])
    assert inputs.shape == (1, cut - 1)
    assert inputs[0].tolist() == ids[:cut - 1] and targets[0].tolist() == labels[1:cut]
    assert tok.decode([t for t in targets[0].tolist() if t != IGNORE_INDEX]) == "hel"
    # Cut before any assistant token: dropped and counted; when none is left, an error.
    examples = ChatExamples([Conversation(MESSAGES, "t:1")] * 2 + short * 3, tok, template, "assistant", 30, tok.eos_token_id)
    assert len(examples) == 3 and examples.dropped == 2 and examples.truncated == 2
    with pytest.raises(AigcError, match="no conversation has a trained token left after truncation to 9 tokens"):
        ChatExamples([Conversation(MESSAGES, "t:1")], tok, template, "assistant", 9, tok.eos_token_id)


def test_packed_chat_rows_carry_positions_and_each_examples_own_targets():
    tok = char_tokenizer()
    template = prepare_chat_template(tok, "chatml")
    conversations = [Conversation(MESSAGES, "t:1"), Conversation(MESSAGES[1:3], "t:2"), Conversation(MESSAGES[1:3], "t:3")]
    single = [conversation_labels(tok, template, c.messages, "assistant", c.where) for c in conversations]
    room = len(single[0][0]) - 1 + 5  # the long one leaves no room for a short one beside it
    examples = ChatExamples(conversations, tok, template, "assistant", room, tok.eos_token_id, packing=True)
    assert examples.examples.packs == [[0], [1, 2]]  # the long one alone, the two short ones together
    (ids, positions), targets = examples.batch([1])
    n = len(single[1][0]) - 1
    assert positions[0].tolist() == list(range(n)) * 2
    assert ids[0].tolist() == single[1][0][:-1] * 2 and targets[0].tolist() == single[1][1][1:] * 2


def test_preference_batches_put_chosen_rows_first():
    tok = char_tokenizer()
    template = prepare_chat_template(tok, "chatml")
    prompt = MESSAGES[:2]
    pairs = [PreferencePair(prompt, [{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "no"}], "p:1"),
             PreferencePair(MESSAGES[1:2], [{"role": "assistant", "content": "ok"}], [{"role": "assistant", "content": "go away"}], "p:2")]
    examples = PreferenceExamples(pairs, tok, template, 200, tok.eos_token_id)
    inputs, targets = examples.batch([0, 1])
    assert inputs.shape == targets.shape and inputs.shape[0] == 4
    learned = [tok.decode([t for t in row.tolist() if t != IGNORE_INDEX]) for row in targets]
    assert learned == ["hello<|im_end|>", "ok<|im_end|>", "no<|im_end|>", "go away<|im_end|>"]
    prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    assert inputs[0, :len(prompt_ids)].tolist() == prompt_ids and inputs[2, :len(prompt_ids)].tolist() == prompt_ids
    assert (targets[0, :len(prompt_ids) - 1] == IGNORE_INDEX).all()
    full = tok.apply_chat_template(prompt + pairs[0].chosen)["input_ids"]
    assert inputs[0, :len(full) - 1].tolist() == full[:-1]  # the chosen row is the rendered conversation, shifted
    assert (targets[:, -1] == IGNORE_INDEX).all()  # right padding (or the newline after <|im_end|>) is not learned
    # Truncated so that both replies keep the same first tokens only: no preference left, dropped.
    same_start = PreferencePair(prompt, [{"role": "assistant", "content": "hello there"}], [{"role": "assistant", "content": "hello you"}], "p:3")
    cut = len(prompt_ids) + 2
    examples = PreferenceExamples(pairs + [same_start], tok, template, cut, tok.eos_token_id)
    assert examples.dropped == 1 and len(examples) == 2 and examples.truncated == 2  # p:2 (no system prompt) still fits
