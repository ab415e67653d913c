"""The decode worker of `aigc serve`: one thread owns the model and decodes every request in one
left-padded batch with one key/value cache (continuous batching).

Each step forwards the batch's last tokens; requests that arrived meanwhile are prefilled as a
batch of their own and joined to it (their cache left-padded to the batch's width), so a request
never waits for another to finish; a finished or abandoned row leaves the batch at once. This is
aigc's batched sampler (aigc_cli/inference/text_decoding.py: the backend's padded forward, the
row's own seeded uniforms drawn by inverse CDF) with every sampling setting kept per row: each
row has its own temperature, top_p, seed, max_tokens, stop strings, and the checkpoint's
end-of-turn ids end every row. A seeded request therefore gets the same text alone or in any
batch, up to floating-point rounding of the padded batch (identical in fp32 on CPU; the tests
check it). Backends without padded decoding (rnn, bigram) decode one request at a time, in
arrival order; a model whose cache is not transformers' plain DynamicCache (sliding-window
layers, say) batches the requests waiting when its batch empties (the next batch, not the next step).

The HTTP side submits a Job and receives its events (Delta pieces while streaming, then Finished
or Failed) through the job's `emit`, called from this thread. An exception in a step fails the
rows of that step (they share the batch's tensors) and the worker goes on with the next requests.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from aigc_cli.backends import spec
from aigc_cli.config import GenerateConfig
from aigc_cli.inference.loading import LoadedModel
from aigc_cli.inference.text_decoding import completion_uniforms, draw_tokens, logits_processors, stop_cut


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


class Delta(NamedTuple):
    text: str  # the next piece of a streamed completion


class Finished(NamedTuple):
    text: str
    finish_reason: str  # "stop" (a stop string or an end-of-turn id) or "length"
    completion_tokens: int


class Failed(NamedTuple):
    message: str
    status: int = 500


@dataclass(eq=False)
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Delta | Finished | Failed], None]
    stream: bool = False
    cancelled: bool = False  # set by the HTTP side when the client has gone; the row leaves the batch


@dataclass(eq=False)
class _Row:
    job: Job
    uniforms: list[float]  # the row's own draws, one per new token
    new: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the completion already emitted as deltas
    ended: bool = False  # its Finished or Failed is sent


@dataclass
class _Batch:
    rows: list[_Row]
    ids: torch.Tensor  # (rows, width), left-padded
    mask: torch.Tensor  # 0 on padding
    cache: object = None


class DecodeWorker:
    """The thread that owns `loaded` and decodes the submitted jobs, up to `max_batch` at once."""

    def __init__(self, loaded: LoadedModel, max_batch: int, end_ids: set[int], log: Callable[[str], None] = lambda _: None):
        self.loaded, self.end_ids, self.log = loaded, set(end_ids), log
        self.padded = spec(loaded.backend_name).padded_decoding
        self.max_batch = max_batch if self.padded else 1
        self.counts = {"finished": 0, "cancelled": 0, "failed": 0}
        self.peak_batch = 0  # the most rows decoded in one step so far
        self.steps = 0
        self._pending: deque[Job] = deque()
        self._batch: _Batch | None = None
        self._unmerged: list[_Row] = []  # admitted this step, not yet in the batch
        self._wake = threading.Condition()
        self._stopping = False
        self._processors: dict[tuple[float, float], object] = {}
        vocab = loaded.tokenizer.get_vocab()
        self._byte_ids = {i for token, i in vocab.items() if len(token) == 6 and token.startswith("<0x") and token.endswith(">")}
        self._thread = threading.Thread(target=self._run, name="aigc-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._stopping:
                job.emit(Failed("the server is shutting down", 503))
                return
            self._pending.append(job)
            self._wake.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is still queued or decoding (the HTTP server has already waited for its
        requests) and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and self._batch is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 — fail the rows of this step, keep serving the others
                self._fail_step(exc)
        rows = (self._batch.rows if self._batch else []) + [_Row(job, []) for job in self._pending]
        for row in rows:
            self._emit(row, Failed("the server is shutting down", 503))
            self.counts["cancelled"] += 1

    @torch.no_grad()
    def _step(self) -> None:
        self._drop_cancelled()
        logits = None
        if self._batch is not None:
            logits = self._forward(self._batch)
        self._unmerged = self._admit()
        for new, new_logits in self._prefilled(self._unmerged):
            self._batch = new if self._batch is None else _merged(self._batch, new, self.loaded.eos_id)
            logits = new_logits if logits is None else torch.cat([logits, new_logits])
        self._unmerged = []
        self.steps += 1
        if self._batch is not None:
            self.peak_batch = max(self.peak_batch, len(self._batch.rows))
            self._advance(self._draw(logits))

    def _forward(self, batch: _Batch) -> torch.Tensor:
        backend, model = self.loaded.backend, self.loaded.model
        if self.padded:
            logits, batch.cache = backend.padded_next_token_logits(model, batch.ids, batch.mask, batch.cache)
        else:
            logits, batch.cache = backend.next_token_logits(model, batch.ids, batch.cache)
        return logits

    def _admit(self) -> list[_Row]:
        """Jobs that join now: as many as there is room for, once the batch's cache can take them."""
        live = len(self._batch.rows) if self._batch else 0
        if live and not _joinable(self._batch.cache):
            return []
        with self._wake:
            jobs = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch - live))]
        self.counts["cancelled"] += sum(job.cancelled for job in jobs)  # their clients left while they waited
        return [_Row(job, completion_uniforms([job.sampling.seed], job.sampling.max_tokens, "cpu")[0].tolist())
                for job in jobs if not job.cancelled]

    def _prefilled(self, rows: list[_Row]) -> list[tuple[_Batch, torch.Tensor]]:
        """The joining rows' prompts encoded (one batch, and its logits). Should that fail, each
        row is tried alone, so the failure is the request's that caused it, not its neighbours'."""
        if not rows:
            return []
        try:
            new = _left_padded(rows, self.loaded.eos_id, self.loaded.device)
            return [(new, self._forward(new))]
        except Exception as exc:  # noqa: BLE001 — isolate the request that breaks the model
            if len(rows) == 1:
                self._fail(rows, exc)
                return []
        return [done for row in rows for done in self._prefilled([row])]

    def _draw(self, logits: torch.Tensor) -> list[int]:
        """The next token of every row, each with its own temperature, top_p and seeded draw."""
        rows = self._batch.rows
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[tuple[float, float], list[int]] = {}
        for j, row in enumerate(rows):
            s = row.job.sampling
            greedy = s.temperature == 0 or s.top_p == 0  # top_p 0 keeps the most likely token only
            groups.setdefault((0.0, 1.0) if greedy else (s.temperature, s.top_p), []).append(j)
        for (temperature, top_p), members in groups.items():
            index = torch.tensor(members, device=logits.device)
            scores = logits[index]
            if temperature == 0:
                tokens[index] = scores.argmax(dim=-1)
                continue
            scores = self._processors_for(temperature, top_p)(None, scores)
            uniforms = torch.tensor([rows[j].uniforms[len(rows[j].new)] for j in members], dtype=torch.float64, device=logits.device)
            tokens[index] = draw_tokens(torch.softmax(scores, dim=-1), uniforms)[:, 0]
        return tokens.tolist()

    def _processors_for(self, temperature: float, top_p: float):
        """The warpers `aigc generate` applies for these settings (no top-k: OpenAI's API has none)."""
        key = (temperature, top_p)
        if key not in self._processors:
            self._processors[key] = logits_processors(GenerateConfig(temperature=temperature, top_p=top_p, top_k=None))
        return self._processors[key]

    def _advance(self, tokens: list[int]) -> None:
        batch = self._batch
        keep = [j for j, (row, token) in enumerate(zip(batch.rows, tokens)) if not self._take(row, token)]
        if len(keep) < len(batch.rows):
            self._select(keep)
        if self._batch is not None:
            kept = torch.tensor([tokens[j] for j in keep], device=batch.ids.device)[:, None]
            batch.ids = torch.cat([batch.ids, kept], dim=1)
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(keep), 1)], dim=1)

    def _take(self, row: _Row, token: int) -> bool:
        """Add `token` to the row; True when the row is finished (and its Finished emitted)."""
        sampling, decode = row.job.sampling, self.loaded.tokenizer.decode
        if token in self.end_ids:
            return self._finish(row, decode(row.new), "stop")
        row.new.append(token)
        if not (sampling.stop or row.job.stream or len(row.new) >= sampling.max_tokens):
            return False
        text = decode(row.new)
        cut = stop_cut(text, list(sampling.stop))
        if cut >= 0:
            return self._finish(row, text[:cut], "stop")
        if len(row.new) >= sampling.max_tokens:
            return self._finish(row, text, "length")
        if not row.job.stream:
            return False
        shown = _safe_prefix(self._stable_text(row.new, text), sampling.stop)
        if shown > row.sent:
            self._emit(row, Delta(text[row.sent:shown]))
            row.sent = shown
        return False

    def _stable_text(self, tokens: list[int], text: str) -> str:
        """The part of `text` no later token can change. tokenizers' ByteFallback decodes a run of
        <0xNN> tokens as one UTF-8 sequence, replacing every byte of an invalid run (even an ASCII
        one) with U+FFFD, so text from a trailing run of byte tokens is held until the run ends."""
        run = 0
        while run < len(tokens) and tokens[-1 - run] in self._byte_ids:
            run += 1
        return self.loaded.tokenizer.decode(tokens[:len(tokens) - run]) if run else text

    def _finish(self, row: _Row, text: str, reason: str) -> bool:
        if row.job.stream and len(text) > row.sent:
            self._emit(row, Delta(text[row.sent:]))
        row.ended = True
        self._emit(row, Finished(text, reason, len(row.new)))
        self.counts["finished"] += 1
        return True

    def _emit(self, row: _Row, event) -> None:
        try:
            row.job.emit(event)
        except RuntimeError:  # the request's event loop is gone (shutdown): nobody is listening
            row.job.cancelled = True

    def _drop_cancelled(self) -> None:
        if self._batch is None:
            return
        keep = [j for j, row in enumerate(self._batch.rows) if not row.job.cancelled]
        self.counts["cancelled"] += len(self._batch.rows) - len(keep)
        if len(keep) < len(self._batch.rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Only the rows `keep` stay in the batch (and its cache); padding no row needs any more is cut."""
        batch = self._batch
        if not keep:
            self._batch = None
            return
        batch.rows = [batch.rows[j] for j in keep]
        index = torch.tensor(keep, device=batch.ids.device)
        batch.ids, batch.mask = batch.ids[index], batch.mask[index]
        if batch.cache is not None:
            batch.cache.batch_select_indices(index)
        unused = int((batch.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())  # leading columns that are padding in every row
        if unused and _joinable(batch.cache):
            batch.ids, batch.mask = batch.ids[:, unused:], batch.mask[:, unused:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def _fail_step(self, exc: Exception) -> None:
        """A step of the batch failed: its rows share its tensors, so they all fail."""
        self._fail((self._batch.rows if self._batch else []) + self._unmerged, exc)
        self._batch, self._unmerged = None, []

    def _fail(self, rows: list[_Row], exc: Exception) -> None:
        rows = [row for row in rows if not row.ended]
        self.log(f"warning: decoding failed for {len(rows)} request(s): {type(exc).__name__}: {exc}")
        for row in rows:
            row.ended = True
            self._emit(row, Failed(f"decoding failed: {type(exc).__name__}: {exc}"))
        self.counts["failed"] += len(rows)


def _joinable(cache) -> bool:
    """Rows can join a batch whose cache is transformers' plain DynamicCache (every layer a
    DynamicLayer holding (rows, heads, width, head_dim) keys and values): padding it on the left
    is exact, as the padded positions are masked out."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return (isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)
            and all(layer.keys is not None and layer.keys.dim() == 4 for layer in cache.layers))


def _left_padded(rows: list[_Row], pad: int, device: str) -> _Batch:
    width = max(len(r.job.prompt_ids) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r.job.prompt_ids)) + r.job.prompt_ids for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r.job.prompt_ids)) + [1] * len(r.job.prompt_ids) for r in rows], device=device)
    return _Batch(rows, ids, mask)


def _merged(batch: _Batch, new: _Batch, pad: int) -> _Batch:
    """`new`'s rows below `batch`'s, both left-padded to the wider of the two (ids, mask and cache)."""
    width = max(batch.ids.size(1), new.ids.size(1))

    def left(t: torch.Tensor, extra: int, value: int = 0) -> torch.Tensor:  # pad dim -1 of ids/mask, dim -2 of keys
        return F.pad(t, (extra, 0), value=value) if t.dim() == 2 else F.pad(t, (0, 0, extra, 0))

    a, b = width - batch.ids.size(1), width - new.ids.size(1)
    ids = torch.cat([left(batch.ids, a, pad), left(new.ids, b, pad)])
    mask = torch.cat([left(batch.mask, a), left(new.mask, b)])
    for mine, theirs in zip(batch.cache.layers, new.cache.layers):
        mine.keys = torch.cat([left(mine.keys, a), left(theirs.keys, b)])
        mine.values = torch.cat([left(mine.values, a), left(theirs.values, b)])
    return _Batch(batch.rows + new.rows, ids, mask, batch.cache)


def _safe_prefix(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be streamed now: not a trailing piece that may still become a stop
    string (it would be cut), nor an incomplete multi-byte character (decoded as U+FFFD)."""
    end = len(text.rstrip("\ufffd"))
    held = 0
    for stop in stops:
        held = max([held] + [k for k in range(1, min(len(stop) - 1, end) + 1) if text[end - k:end] == stop[:k]])
    return end - held
