"""Conversations → labelled token rows through a chat template, for SFT and preference tuning.

The template is the base tokenizer's own `chat_template`, or a built-in one (chat.CHAT_TEMPLATES)
whose tokens are added to the tokenizer. Labels come from prefix renders, so they work with any
template: assistant turn i spans from the end of render(messages[:i], add_generation_prompt=True)
to the end of render(messages[:i+1]), up to and with the turn's end-of-turn token (so the model
learns to stop; a newline the template writes after it is not learned). A template that renders a turn differently once later turns follow (one that
drops earlier reasoning, say) has no such spans and is refused. The whole conversation is
tokenized once, and a token is labelled when it starts inside a labelled span.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aigc_cli.data.chat import CHAT_TEMPLATE_TOKENS, CHAT_TEMPLATES, Conversation, PreferencePair
from aigc_cli.data.packing import IGNORE_INDEX, ExampleRows, padded
from aigc_cli.errors import AigcError

if TYPE_CHECKING:
    import torch

PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@dataclass
class ChatTemplate:
    name: str  # a built-in's name, or "the base tokenizer's"
    source: str  # Jinja
    end_of_turn_id: int  # the token closing an assistant turn: generation stops there
    added_ids: list[int] = field(default_factory=list)  # tokens added to the tokenizer: new embedding rows


def prepare_chat_template(tokenizer, builtin: str) -> ChatTemplate:
    """The template conversations are rendered with: the tokenizer's own, else the built-in
    `builtin`, whose missing tokens are added to the tokenizer (special: never split, and never
    formed by merging ordinary text) and which becomes the tokenizer's chat_template."""
    own = tokenizer.chat_template
    if own:
        name, source, added = "the base tokenizer's", tokenizer.get_chat_template(), []
    else:
        name, source = builtin, CHAT_TEMPLATES[builtin]
        vocab = tokenizer.get_vocab()
        missing = [t for t in CHAT_TEMPLATE_TOKENS[builtin] if t not in vocab]
        tokenizer.add_tokens(missing, special_tokens=True)
        added = tokenizer.convert_tokens_to_ids(missing)
        tokenizer.chat_template = source
    template = ChatTemplate(name, source, 0, added)
    template.end_of_turn_id = _end_of_turn(tokenizer, template)
    return template


def _end_of_turn(tokenizer, template: ChatTemplate) -> int:
    """The last special token of a rendered assistant turn (<|im_end|>, <|eot_id|>, </s>, ...)."""
    prompt = render(tokenizer, template, PROBE[:1], "the chat template", generation_prompt=True)
    full = render(tokenizer, template, PROBE, "the chat template")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if not t.content.isspace()}
    ends = [i for i, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"]) if start >= len(prompt) and i in special]
    if not full.startswith(prompt):
        raise AigcError(f"{template.name} chat template is not prefix-stable: a reply does not continue the prompt it answers",
                        "use a base whose template renders the prompt of a reply as the reply's own beginning")
    if not ends:
        raise AigcError(f"{template.name} chat template ends an assistant turn with no special token",
                        "a tuned model could not learn where to stop; use a template that closes turns with a token such as <|im_end|>")
    return ends[-1]


def render(tokenizer, template: ChatTemplate, messages: list[dict], where: str, generation_prompt: bool = False) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, chat_template=template.source, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise AigcError(f"{where}: {template.name} chat template refuses this conversation ({exc})",
                        "fix the record, or use a base whose template accepts it") from None


def conversation_labels(tokenizer, template: ChatTemplate, messages: list[dict], train_on: str, where: str,
                        first_turn: int = 0) -> tuple[list[int], list[int]]:
    """(ids, labels) of one conversation: labels on the assistant turns from index `first_turn`
    (train_on assistant), on the last one (last_assistant) or on every token (all)."""
    full = render(tokenizer, template, messages, where)
    if train_on == "all":
        spans = [(0, len(full))]
    else:
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= first_turn]
        spans = [_turn_span(tokenizer, template, messages, i, full, where) for i in (turns[-1:] if train_on == "last_assistant" else turns)]
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = encoded["input_ids"], [IGNORE_INDEX] * len(encoded["input_ids"])
    for a, b in spans:
        inside = [k for k, (start, _) in enumerate(encoded["offset_mapping"]) if a <= start < b]
        if train_on != "all":  # a turn's labels end at its end-of-turn token (not the newline some templates add)
            ends = [k for k in inside if ids[k] == template.end_of_turn_id]
            inside = [k for k in inside if not ends or k <= ends[-1]]
        for k in inside:
            labels[k] = ids[k]
    return ids, labels


def _turn_span(tokenizer, template: ChatTemplate, messages: list[dict], i: int, full: str, where: str) -> tuple[int, int]:
    before = render(tokenizer, template, messages[:i], where, generation_prompt=True)
    through = render(tokenizer, template, messages[:i + 1], where)
    if not (through.startswith(before) and full.startswith(through)):
        raise AigcError(f"{where}: {template.name} chat template is not prefix-stable: turn {i} renders differently once "
                        "later turns follow, so its tokens cannot be told apart for the loss",
                        "set finetune.train_on=last_assistant (only the final turn is needed), or use a base whose template renders each turn once")
    return len(before), len(through)


class ChatExamples:
    """Conversations as training rows (PairExamples' interface): the loss covers what train_on says."""

    def __init__(self, conversations: list[Conversation], tokenizer, template: ChatTemplate, train_on: str,
                 max_length: int, pad_id: int, packing: bool = False):
        examples = [conversation_labels(tokenizer, template, c.messages, train_on, c.where) for c in conversations]
        self.examples = ExampleRows(examples, pad_id, max_length, packing)
        self.truncated, self.dropped = self.examples.truncated, self.examples.dropped
        if not self.examples.rows:
            raise AigcError(f"no conversation has a trained token left after truncation to {max_length} tokens",
                            "raise finetune.max_length, or shorten the conversations")

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices):
        return self.examples.batch(indices)

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        return self.examples.random_batch(batch_size, block_size, generator, shard)


# Segments of a shared-prompt row (PreferenceExamples(shared_prompt=True)): what each position holds.
SHARED, CHOSEN, REJECTED, PADDING = 0, 1, 2, 3


class PreferenceExamples:
    """Preference pairs as [2B, T] batches: rows 0..B-1 prompt + chosen, rows B..2B-1 prompt +
    rejected, right-padded to one width and shifted like PairExamples; targets are IGNORE_INDEX on
    the prompt and the padding. Both sequences are cut to max_length + 1 tokens from the end; a pair
    where either reply has no token left, or both became the same tokens, is dropped (`dropped`).

    shared_prompt: one row per pair instead, [prompt | chosen | rejected] (`shared_prompt_rows`):
    the prompt is computed once for both replies. The batch's inputs are then (ids, position ids,
    segments), all [B, W]; the rejected reply's positions restart where the prompt ends and its
    tokens must not attend to the chosen ones (training/preference.py makes that mask)."""

    def __init__(self, pairs: list[PreferencePair], tokenizer, template: ChatTemplate, max_length: int, pad_id: int,
                 shared_prompt: bool = False):
        self.pad_id, self.truncated, self.rows, self.shared_prompt = pad_id, 0, [], shared_prompt
        for pair in pairs:
            chosen, rejected = (conversation_labels(tokenizer, template, pair.prompt + reply, "assistant", pair.where, len(pair.prompt))
                                for reply in (pair.chosen, pair.rejected))
            self.truncated += max(len(chosen[0]), len(rejected[0])) > max_length + 1
            chosen, rejected = [(ids[:max_length + 1], labels[:max_length + 1]) for ids, labels in (chosen, rejected)]
            if all(any(t != IGNORE_INDEX for t in labels[1:]) for _, labels in (chosen, rejected)) and chosen[0] != rejected[0]:
                self.rows.append((chosen, rejected))
        self.dropped = len(pairs) - len(self.rows)
        if not self.rows:
            raise AigcError(f"no preference pair has two different replies left after truncation to {max_length} tokens",
                            "raise finetune.max_length, or shorten the prompts")

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices):
        if self.shared_prompt:
            return shared_prompt_rows([self.rows[i] for i in indices], self.pad_id)
        sequences = [self.rows[i][0] for i in indices] + [self.rows[i][1] for i in indices]
        ids, labels = padded([s[0] for s in sequences], self.pad_id), padded([s[1] for s in sequences], IGNORE_INDEX)
        return ids[:, :-1], labels[:, 1:]

    def random_batch(self, batch_size: int, block_size: int, generator: torch.Generator, shard: tuple[int, int] = (0, 1)):
        import torch

        from aigc_cli.data.batches import own_rows

        return self.batch(own_rows(torch.randint(len(self.rows), (batch_size,), generator=generator).tolist(), shard))


def shared_prompt_rows(pairs: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]], pad_id: int):
    """Pairs ((chosen ids, labels), (rejected ids, labels)), unshifted, as one row each:
    ((ids, position ids, segments), targets), all int64 [B, W], right-padded. Shifted like
    PreferenceExamples' rows, each pair's [2, T] inputs x and targets y become
    x[:m] | x_chosen[m:] | x_rejected[m:], where the first m inputs are the same in both and
    none of their targets is scored (m stops before the reply's first label); positions are each
    sequence's own (the rejected part restarts at m), so with attention that lets a token see
    SHARED positions and its own segment only, every scored log-prob is the one the [2B, T] layout
    gives. Padding: segment PADDING, position 0, target IGNORE_INDEX."""
    import torch

    rows = []
    for (chosen, chosen_labels), (rejected, rejected_labels) in pairs:
        first_label = min(_first_label(chosen_labels), _first_label(rejected_labels))
        common = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        m = max(0, min(common, first_label - 1))  # input j is shared when its token is and its target labels[j+1] is not scored
        chosen_part, rejected_part = range(m, len(chosen) - 1), range(m, len(rejected) - 1)
        ids = chosen[:m] + [chosen[j] for j in chosen_part] + [rejected[j] for j in rejected_part]
        targets = [IGNORE_INDEX] * m + [chosen_labels[j + 1] for j in chosen_part] + [rejected_labels[j + 1] for j in rejected_part]
        positions = list(range(m)) + list(chosen_part) + list(rejected_part)
        segments = [SHARED] * m + [CHOSEN] * len(chosen_part) + [REJECTED] * len(rejected_part)
        rows.append((ids, positions, segments, targets))
    width = max(len(r[0]) for r in rows)
    return ((padded([r[0] for r in rows], pad_id, width), padded([r[1] for r in rows], 0, width),
             padded([r[2] for r in rows], PADDING, width)), padded([r[3] for r in rows], IGNORE_INDEX, width))


def _first_label(labels: list[int]) -> int:
    return next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
