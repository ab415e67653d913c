"""The one text decode loop: a left-padded batch of prompts, one forward pass per token and one
key/value cache for the whole batch, each row drawing from its own seeded random numbers.

A row's draws are its own (uniforms from the row's seed, inverse-CDF sampling), so a completion
is the same alone, in any batch and streamed. Rows decode together only where that is exact: a
backend that decodes padded batches (spec padded_decoding) and rows that stay within the
context window; the others (the rnn, whose state padding would flow through, and rows that need
the sliding re-encode past the window) go as batches of one. Streaming is a batch of one with
an `on_text` callback.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from aigc_cli.backends import spec
from aigc_cli.config import GenerateConfig
from aigc_cli.inference.loading import LoadedModel


class Completion(NamedTuple):
    text: str
    new_tokens: int
    finish_reason: str  # "length", "eos" (an end-of-text or end-of-turn token) or "stop" (a stop string)


def sample_texts(loaded: LoadedModel, prompts: list[str], gc: GenerateConfig, seeds: list[int],
                 on_text: Callable[[str], None] | None = None) -> list[Completion]:
    """One completion per prompt, prompt i sampled from seeds[i]. `on_text` (one prompt only)
    receives the completion piece by piece as it grows."""
    if on_text is not None and len(prompts) != 1:
        raise ValueError("on_text streams one prompt at a time")
    tok, backend = loaded.tokenizer, loaded.backend
    rows = [(tok.encode(p, add_special_tokens=False).ids if p else []) or [loaded.eos_id] for p in prompts]
    limit = backend.context_length(loaded.model)
    together = [i for i, row in enumerate(rows)
                if spec(loaded.backend_name).padded_decoding and (limit is None or len(row) + gc.max_new_tokens <= limit)]
    groups = [together] if len(together) > 1 else []
    groups += [[i] for i in range(len(rows)) if len(together) <= 1 or i not in together]
    processors = logits_processors(gc)
    results: dict[int, Completion] = {}
    for group in groups:
        results.update(zip(group, decode(loaded, [rows[i] for i in group], gc, [seeds[i] for i in group], processors, on_text)))
    return [results[i] for i in range(len(rows))]


def logits_processors(gc: GenerateConfig):
    from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    processors = LogitsProcessorList()
    if gc.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(gc.repetition_penalty))
    if gc.temperature > 0:
        if gc.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(gc.temperature))
        if gc.top_k:
            processors.append(TopKLogitsWarper(gc.top_k))
        if gc.top_p < 1.0:
            processors.append(TopPLogitsWarper(gc.top_p))
    return processors


@torch.no_grad()
def decode(loaded: LoadedModel, rows: list[list[int]], gc: GenerateConfig, seeds: list[int], processors,
           on_text: Callable[[str], None] | None = None) -> list[Completion]:
    """The loop. Several rows need a backend with a padded forward and rows within the context
    window (sample_texts groups them so); a single row takes the plain incremental forward."""
    device, eos, backend = loaded.device, loaded.eos_id, loaded.backend
    ends = set(loaded.stop_ids) | {eos}  # end-of-text, and a chat model's end-of-turn
    batch = _LeftPadded(rows, eos, device)
    uniforms = completion_uniforms(seeds, gc.max_new_tokens, device)
    new: list[list[int]] = [[] for _ in rows]
    finish, texts = ["length"] * len(rows), [None] * len(rows)
    live = list(range(len(rows)))  # the rows still in the batch tensors, in order
    shown, state = "", None
    for step in range(gc.max_new_tokens):
        if len(rows) > 1:
            logits, state = backend.padded_next_token_logits(loaded.model, batch.ids, batch.mask, state)
        else:
            logits, state = backend.next_token_logits(loaded.model, batch.ids, state)
        scores = processors(batch.seen, logits)
        if gc.temperature == 0:
            next_ids = scores.argmax(dim=-1, keepdim=True)
        else:  # each row's own random numbers: the draw is the one that row gets alone
            next_ids = draw_tokens(torch.softmax(scores, dim=-1), uniforms[live, step])
        done = []
        for j, (i, token) in enumerate(zip(live, next_ids[:, 0].tolist())):
            if token in ends:
                finish[i] = "eos"
                done.append(j)
                continue
            new[i].append(token)
            if gc.stop or on_text is not None:
                text = loaded.tokenizer.decode(new[i])
                cut = stop_cut(text, gc.stop)
                if cut >= 0:
                    text, texts[i], finish[i] = text[:cut], text[:cut], "stop"
                    done.append(j)
                if on_text is not None and not text.endswith("\ufffd"):  # wait until a multi-byte character is complete
                    on_text(text[len(shown):])
                    shown = text
        if len(done) == len(live):
            break
        batch.append(next_ids)
        if done:  # finished rows leave the batch (and the key/value cache): no more work spent on them
            keep = [j for j in range(len(live)) if j not in done]
            batch.select(keep)
            state.batch_select_indices(torch.tensor(keep, device=device))
            live = [live[j] for j in keep]
    return [Completion(texts[i] if texts[i] is not None else loaded.tokenizer.decode(new[i]), len(new[i]), finish[i])
            for i in range(len(rows))]


def stop_cut(text: str, stops: list[str]) -> int:
    """Where the first stop string in `text` begins, or -1."""
    return min((text.find(s) for s in stops if s and s in text), default=-1)


class _LeftPadded:
    """Token ids of a batch, padded on the left to one width with `pad`: `mask` is 0 on padding, and `seen`
    (what the repetition penalty looks at) holds each row's first real token where the padding
    is, a token the row holds anyway, so each row is penalised for its own tokens only."""

    def __init__(self, rows: list[list[int]], pad: int, device: str):
        width = max(map(len, rows))
        self.ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        self.mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        first_real = torch.tensor([[width - len(r)] for r in rows], device=device)
        self.seen = torch.where(self.mask.bool(), self.ids, self.ids.gather(1, first_real))

    def append(self, next_ids: torch.Tensor) -> None:
        self.ids, self.seen = torch.cat([self.ids, next_ids], dim=1), torch.cat([self.seen, next_ids], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(next_ids), 1)], dim=1)

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.ids.device)
        self.ids, self.seen, self.mask = self.ids[index], self.seen[index], self.mask[index]


def completion_uniforms(seeds: list[int], steps: int, device: str) -> torch.Tensor:
    """(rows, steps) uniforms in (0, 1], one seeded stream per completion, drawn up front: a whole
    batch then samples in one vectorised call per step and still gets each row's own draws."""
    return torch.stack([1.0 - torch.rand(steps, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
                        for seed in seeds]).to(device)


def draw_tokens(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: the first id whose cumulative probability
    reaches u × total. A zero-probability id (cut by top-k/top-p) never is the first, since u > 0."""
    cumulative = probs.double().cumsum(dim=-1)
    targets = (uniforms.unsqueeze(1) * cumulative[:, -1:]).contiguous()
    return torch.searchsorted(cumulative, targets).clamp_(max=probs.size(-1) - 1)
