"""Preference tuning (finetune.method dpo | orpo | simpo) as one more loss of the training loop.

A batch is [2B, T] (aigc_cli/data/chat_examples.py's PreferenceExamples): rows 0..B-1 the chosen
sequences, rows B..2B-1 the rejected ones, targets -100 on prompt and padding; or, where the model
allows it (`shares_prompts`), one [prompt | chosen | rejected] row per pair, the prompt computed
once for both replies (a 4D attention mask keeps the rejected reply from seeing the chosen one).
The objective runs the policy once over the batch, turns the logits into each reply's summed
log-probability (`pair_logps`), and hands those to one loss function per method. Each loss function is
written out from its paper and matches TRL 1.16's implementation to 1e-5 on the same model,
batch and β (tests/training/test_preference.py calls TRL's own code):

- DPO (Rafailov et al. 2023), sigmoid: -log σ(β·Δ), Δ = (π_c - π_r) - (ref_c - ref_r) in summed
  log-probs; with label smoothing ε, robust DPO (Chowdhury et al. 2024; TRL's "robust").
  IPO (Azar et al. 2023): (Δ' - 1/(2β))², Δ' from log-ratios divided by each reply's token count,
  as TRL computes it. Hinge (SLiC): max(0, 1 - β·Δ). Rewards: β × the reply's log-ratio.
- ORPO (Hong et al. 2024): NLL of the chosen reply - λ · log σ(log odds(c) - log odds(r)), odds on
  the length-averaged log-prob. Rewards: λ × average log-prob. No reference.
- SimPO (Meng et al. 2024): -log σ(β·(avg_c - avg_r) - γ). Rewards: β × average log-prob. No reference.

DPO's reference: under LoRA the same model with its adapters disabled (no second copy in memory),
for full weights a frozen copy of the base (`frozen_reference`). The finetune recipe trains
`preference_backend`: the gpt or lora backend with this objective as its loss, so saving, loading,
parameters and checkpoints stay the backend's.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from aigc_cli.config import PREFERENCE_METHODS, FinetuneConfig, PreferenceConfig
from aigc_cli.data.chat_examples import CHOSEN, REJECTED, SHARED
from aigc_cli.training.loss_stats import report

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- log-probabilities
_LOGPROB_CHUNK = 1 << 24  # float32 log-prob elements made at once (64 MiB): a 150k-token vocabulary gets a row or two


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of log p(target) over the positions whose target is not -100, in float32
    whatever the logits' dtype, and how many such positions there are."""
    per_token, scored = token_logps(logits, targets)
    return per_token.sum(-1), scored.sum(-1)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) at every position (float32, 0 where the target is -100) and where it is scored.
    As many rows at a time as fit in _LOGPROB_CHUNK float32 elements: a small vocabulary goes in one
    pass, a large one does not make the whole batch's float32 log-softmax at once."""
    scored = targets != IGNORE_INDEX
    picked = targets.masked_fill(~scored, 0).unsqueeze(-1)
    rows = max(1, _LOGPROB_CHUNK // max(1, logits.size(1) * logits.size(2)))
    per_token = torch.cat([torch.log_softmax(chunk.float(), dim=-1).gather(-1, ids).squeeze(-1)
                           for chunk, ids in zip(logits.split(rows), picked.split(rows))])
    return torch.where(scored, per_token, 0.0), scored


def pair_logps(model: torch.nn.Module, inputs, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each reply's summed log-prob and scored-token count under `model`, [2B] each: the B chosen,
    then the B rejected. One forward either way: over a [2B, T] batch, or over shared-prompt rows
    ((ids, positions, segments), data/chat_examples.shared_prompt_rows), [B, W], where each reply
    sums its own segment's positions."""
    if not isinstance(inputs, tuple):
        return sequence_logps(_logits(model, inputs), targets)
    ids, positions, segments = inputs
    mask = shared_prompt_mask(segments, getattr(model.config, "_attn_implementation", None))
    # No logits where no row scores anything: the prompt positions every row of the batch shares.
    skip = int((segments == SHARED).all(0).long().cumprod(0).sum())
    logits = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False,
                   logits_to_keep=torch.arange(skip, ids.size(1), device=ids.device)).logits
    targets, segments = targets[:, -logits.size(1):], segments[:, -logits.size(1):]  # a model that keeps all: nothing cut
    per_token, scored = token_logps(logits, targets)
    chosen, rejected = segments == CHOSEN, segments == REJECTED
    logps = torch.cat([torch.where(chosen, per_token, 0.0).sum(-1), torch.where(rejected, per_token, 0.0).sum(-1)])
    return logps, torch.cat([(scored & chosen).sum(-1), (scored & rejected).sum(-1)])


def shared_prompt_mask(segments: torch.Tensor, implementation: str | None) -> torch.Tensor:
    """The [B, 1, W, W] attention mask of shared-prompt rows, in the form transformers passes on
    as it is (a 4D mask): causal, and a position sees the SHARED prompt and its own segment only,
    so the rejected reply never sees the chosen one (padding sees itself: no row is all masked).
    Boolean (True = attend), as sdpa takes it; additive float for eager attention, which adds the
    mask to its scores."""
    width = segments.size(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    allowed = (causal & ((key == SHARED) | (key == query)))[:, None]
    if implementation == "eager":
        return torch.zeros(allowed.shape, device=segments.device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return allowed


def shares_prompts(model: torch.nn.Module) -> bool:
    """Whether `model` scores shared-prompt rows as it scores separate sequences: a 4D attention
    mask and position ids taken as given (transformers' sdpa and eager attention do; flash
    attention, a sliding window shorter than the row or a forward that ignores the mask does not).
    Checked by running one tiny pair both ways."""
    from aigc_cli.data.chat_examples import shared_prompt_rows

    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    prompt, chosen, rejected = [1, 2, 3, 4], [5, 6, 7], [8, 9]
    sequences = [[(t * 7 + 1) % vocab for t in prompt + reply] for reply in (chosen, rejected)]
    pair = [(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt):]) for ids in sequences]
    shared_inputs, shared_targets = shared_prompt_rows([tuple(pair)], 0)
    width = max(map(len, sequences))
    rows = torch.tensor([ids + [0] * (width - len(ids)) for ids in sequences], device=device)
    labels = torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in pair], device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            separate = pair_logps(model, rows[:, :-1], labels[:, 1:])[0]
            shared = pair_logps(model, tuple(t.to(device) for t in shared_inputs), shared_targets.to(device))[0]
    except (TypeError, ValueError, RuntimeError):  # a forward that refuses position ids or a 4D mask
        return False
    finally:
        model.train(was_training)
    return bool(torch.allclose(shared, separate, atol=1e-4, rtol=1e-4))


# ----------------------------------------------------------------------------- the losses
@dataclass
class PreferenceLoss:
    loss: torch.Tensor  # scalar: the mean over the pairs
    chosen_rewards: torch.Tensor  # per pair, without gradient: what the method calls a reply's reward
    rejected_rewards: torch.Tensor

    def stats(self) -> dict[str, torch.Tensor]:
        """TRL's logged names and definitions: means over the pairs; accuracy counts chosen > rejected."""
        chosen, rejected = self.chosen_rewards, self.rejected_rewards
        return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
                "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean()}


def _dpo_rewards(beta, policy_chosen, policy_rejected, reference_chosen, reference_rejected):
    chosen_ratio, rejected_ratio = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    return chosen_ratio, rejected_ratio, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def dpo_sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                     reference_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    """DPO on summed log-probs; label_smoothing ε > 0 makes it robust DPO: an unbiased loss when a
    share ε of the pairs is flipped (TRL's loss_type "robust")."""
    chosen_ratio, rejected_ratio, chosen_rewards, rejected_rewards = _dpo_rewards(beta, policy_chosen, policy_rejected,
                                                                                  reference_chosen, reference_rejected)
    z = beta * (chosen_ratio - rejected_ratio)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return PreferenceLoss(losses.mean(), chosen_rewards, rejected_rewards)


def dpo_ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                 reference_rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
                 beta: float) -> PreferenceLoss:
    """IPO's squared loss (its Eq. 17, β is τ) on log-ratios divided by each reply's token count, as
    TRL does (the form the IPO authors confirmed); the rewards stay β × the summed log-ratios."""
    chosen_ratio, rejected_ratio, chosen_rewards, rejected_rewards = _dpo_rewards(beta, policy_chosen, policy_rejected,
                                                                                  reference_chosen, reference_rejected)
    delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
    return PreferenceLoss(((delta - 1 / (2 * beta)) ** 2).mean(), chosen_rewards, rejected_rewards)


def dpo_hinge_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
                   reference_rejected: torch.Tensor, beta: float) -> PreferenceLoss:
    """SLiC's hinge on the DPO log-ratio difference."""
    chosen_ratio, rejected_ratio, chosen_rewards, rejected_rewards = _dpo_rewards(beta, policy_chosen, policy_rejected,
                                                                                  reference_chosen, reference_rejected)
    return PreferenceLoss(torch.relu(1 - beta * (chosen_ratio - rejected_ratio)).mean(), chosen_rewards, rejected_rewards)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, switching form at -log 2 where each loses precision (Mächler 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
              orpo_lambda: float) -> PreferenceLoss:
    """ORPO: the chosen replies' NLL per token plus λ × the odds-ratio loss on the average log-probs
    (log odds p/(1-p) = log p - log(1 - p))."""
    nll = -chosen.sum() / chosen_tokens.sum().clamp(min=1)
    chosen_avg, rejected_avg = chosen / chosen_tokens.clamp(min=1), rejected / rejected_tokens.clamp(min=1)
    log_odds = (chosen_avg - rejected_avg) - (_log1mexp(chosen_avg) - _log1mexp(rejected_avg))
    loss = nll - orpo_lambda * F.logsigmoid(log_odds).mean()
    return PreferenceLoss(loss, orpo_lambda * chosen_avg.detach(), orpo_lambda * rejected_avg.detach())


def simpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_tokens: torch.Tensor, rejected_tokens: torch.Tensor,
               beta: float, gamma: float) -> PreferenceLoss:
    """SimPO: the reward is β × the average log-prob, and the chosen should beat the rejected by γ."""
    chosen_rewards, rejected_rewards = beta * chosen / chosen_tokens.clamp(min=1), beta * rejected / rejected_tokens.clamp(min=1)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma).mean()
    return PreferenceLoss(loss, chosen_rewards.detach(), rejected_rewards.detach())


# ----------------------------------------------------------------------------- the objective
Loss = Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor], str], torch.Tensor]


def preference_loss_fn(pc: PreferenceConfig, method: str, reference: torch.nn.Module | None = None) -> Loss:
    """The training loss `loss(model, (inputs, targets), part)` of `method` ("dpo", "orpo", "simpo"),
    a backend's signature. For dpo, `reference` is the frozen model scoring the replies (weights:
    full), or None: `model` is then a peft model, and its base with the adapters disabled is the
    reference. Every call reports the rewards (loss_stats)."""
    if method not in PREFERENCE_METHODS:
        raise ValueError(f"not a preference method: {method!r} (one of {', '.join(PREFERENCE_METHODS)})")
    if method == "dpo" and reference is not None and any(p.requires_grad for p in reference.parameters()):
        raise ValueError("the DPO reference must be frozen (see frozen_reference)")

    def loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], part: str) -> torch.Tensor:
        inputs, targets = batch
        with _without_dropout(model) if pc.disable_dropout else nullcontext():
            logps, tokens = pair_logps(model, inputs, targets)  # chosen and rejected in one forward
        pairs = logps.size(0) // 2
        chosen, rejected, chosen_tokens, rejected_tokens = logps[:pairs], logps[pairs:], tokens[:pairs], tokens[pairs:]
        if method == "orpo":
            result = orpo_loss(chosen, rejected, chosen_tokens, rejected_tokens, pc.orpo_lambda)
        elif method == "simpo":
            result = simpo_loss(chosen, rejected, chosen_tokens, rejected_tokens, pc.beta_for("simpo"), pc.simpo_gamma)
        else:
            ref = reference_logps(model, reference, inputs, targets)
            beta = pc.beta_for("dpo")
            if pc.loss_type == "ipo":
                result = dpo_ipo_loss(chosen, rejected, ref[:pairs], ref[pairs:], chosen_tokens, rejected_tokens, beta)
            elif pc.loss_type == "hinge":
                result = dpo_hinge_loss(chosen, rejected, ref[:pairs], ref[pairs:], beta)
            else:
                result = dpo_sigmoid_loss(chosen, rejected, ref[:pairs], ref[pairs:], beta, pc.label_smoothing)
        report(result.stats())
        return result.loss

    return loss


@torch.no_grad()
def reference_logps(model: torch.nn.Module, reference: torch.nn.Module | None, inputs: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-prob under the reference, without dropout and without gradient: the frozen
    `reference`, or (None) `model`'s base with its adapters disabled."""
    if reference is not None:
        if next(reference.parameters()).device != targets.device:
            reference.to(targets.device)  # under torchrun "cuda" is each process's own GPU only once training starts
        return pair_logps(reference, inputs, targets)[0]
    if not hasattr(model, "disable_adapter"):
        raise ValueError("a DPO reference is needed: pass a frozen model, or train LoRA adapters (a peft model)")
    with model.disable_adapter(), _without_dropout(model):
        return pair_logps(model, inputs, targets)[0]


def frozen_reference(base_model: torch.nn.Module) -> torch.nn.Module:
    """DPO's reference for full-weight tuning: a copy of the base as loaded, frozen and in eval mode.
    Take it before training changes the base; on --resume the base is still loaded from
    finetune.base (the resumed weights go into a new model), so it is the original then too."""
    reference = copy.deepcopy(base_model).eval()
    reference.requires_grad_(False)
    return reference


def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    # Right-padded rows need no attention mask: under causal attention padding comes after every scored position.
    return model(input_ids=inputs, use_cache=False).logits


@contextmanager
def _without_dropout(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for one forward, as TRL's disable_dropout does: every dropout module's p, and the
    float `attention_dropout` of transformers' Llama-family attention layers, set to 0. Not eval mode:
    that would also switch off gradient checkpointing (peft's prepare_model_for_kbit_training turns it on)."""
    saved: list[tuple[torch.nn.Module, str, float]] = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            saved.append((module, "p", module.p))
        elif isinstance(getattr(module, "attention_dropout", None), float):
            saved.append((module, "attention_dropout", module.attention_dropout))
    try:
        for module, name, _ in saved:
            setattr(module, name, 0.0)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


# ----------------------------------------------------------------------------- the finetune recipe's backend
class PreferenceBackend:
    """The backend that trains (gpt or lora) with `loss` replaced by a preference objective; every
    other function (parameters, save, load, add_adapters, merge, ...) is the backend's own."""

    def __init__(self, backend, loss: Loss):
        self.backend, self.loss = backend, loss

    def __getattr__(self, name: str):
        return getattr(self.backend, name)


def preference_backend(fc: FinetuneConfig, base_model: torch.nn.Module) -> tuple[str, PreferenceBackend]:
    """For finetune.method dpo|orpo|simpo: the backend's name ("lora" or "gpt", by
    finetune.preference.weights) and the backend with the method's objective as its loss. Call it
    before training: dpo on full weights freezes a copy of `base_model` as the reference."""
    from aigc_cli.backends import get_backend

    name = "lora" if fc.preference.weights == "lora" else "gpt"
    reference = frozen_reference(base_model) if fc.method == "dpo" and name == "gpt" else None
    return name, PreferenceBackend(get_backend(name), preference_loss_fn(fc.preference, fc.method, reference))
