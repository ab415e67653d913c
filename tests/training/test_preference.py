"""aigc_cli/training/preference.py: DPO/IPO/hinge/robust, ORPO and SimPO against TRL 1.16's own code,
the reference model, one forward pass, and the reward stats through the training loop."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from aigc_cli.config import PreferenceConfig, validate_config
from aigc_cli.errors import AigcError
from aigc_cli.training import loss_stats
from aigc_cli.training.preference import (
    PreferenceBackend, frozen_reference, preference_loss_fn, reference_logps, sequence_logps,
)

VOCAB = 48
# (prompt, chosen reply, rejected reply) token ids: replies of different lengths, so padding and
# the per-token averages matter.
PAIRS = [([5, 6, 7], [10, 11, 12, 2], [13, 2]),
         ([8, 9], [14, 2], [15, 16, 17, 18, 2]),
         ([20, 21, 22, 23], [24, 25, 2], [26, 27, 2])]
ONE_TOKEN_PROMPTS = [([1], chosen, rejected) for _, chosen, rejected in PAIRS]


class PreferenceBatches:
    """Fixed token pairs as the loop takes them (chat-data's PreferenceExamples contract): [2B, T]
    rows, the B chosen first, right-padded, targets -100 on prompt and padding, shifted."""

    truncated = 0

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def full_rows(self, indices):
        """Unshifted ids, reply labels and attention mask, as TRL's collators make them."""
        rows = [(p + c, [-100] * len(p) + c) for p, c, _ in (self.pairs[i] for i in indices)]
        rows += [(p + r, [-100] * len(p) + r) for p, _, r in (self.pairs[i] for i in indices)]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([ids + [0] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        return ids, labels, mask

    def batch(self, indices):
        ids, labels, _ = self.full_rows(indices)
        return ids[:, :-1], labels[:, 1:]

    def random_batch(self, batch_size, block_size, generator, shard=(0, 1)):
        return self.batch(torch.randint(len(self), (batch_size,), generator=generator).tolist())


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=2)
    return GPT2LMHeadModel(config)


def nudged(model, seed: int = 1, scale: float = 0.05):
    """A copy with every weight moved a little: a policy that differs from its reference."""
    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))
    return out


def with_adapters(base, seed: int = 3):
    """base with LoRA adapters whose B matrices are random (peft starts them at 0), so they matter."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn", "c_fc"],
                                            fan_in_fan_out=True, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return model


def ours(pc: PreferenceConfig, method: str, model, reference, pairs=PAIRS):
    """Our objective's loss and its reported stats on all of `pairs` as one batch."""
    batch = PreferenceBatches(pairs).batch(range(len(pairs)))
    with loss_stats.collect() as reported:
        loss = preference_loss_fn(pc, method, reference)(model, batch, "model")
    return loss, {name: values[0] for name, values in reported.items()}


# ----------------------------------------------------------------------------- TRL's own code
def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def trl_dpo(model, ref_model, loss_type: str, beta: float, label_smoothing: float = 0.0, pairs=PAIRS):
    """TRL 1.16's DPOTrainer._compute_loss, the trainer built with only the attributes that method reads."""
    from trl import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head
    from peft import PeftModel

    model = copy.deepcopy(model)
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    add_fused_lm_head(model.get_base_model() if isinstance(model, PeftModel) else model, outputs=outputs)
    if ref_model is not None:
        ref_model = copy.deepcopy(ref_model)
        add_fused_lm_head(ref_model)
    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=model, ref_model=ref_model, accelerator=_accelerator(), args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=False, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    ids, labels, mask = PreferenceBatches(pairs).full_rows(range(len(pairs)))
    inputs = {"input_ids": ids, "attention_mask": mask, "completion_mask": (labels != -100).long()}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    return loss, {name: values[0] for name, values in trainer._metrics["train"].items()}


def trl_pair_batch(pairs):
    ids, labels, mask = PreferenceBatches(pairs).full_rows(range(len(pairs)))
    b = len(pairs)
    return {"chosen_input_ids": ids[:b], "chosen_attention_mask": mask[:b], "chosen_labels": labels[:b],
            "rejected_input_ids": ids[b:], "rejected_attention_mask": mask[b:], "rejected_labels": labels[b:]}


def trl_orpo(model, orpo_lambda: float, pairs):
    """TRL 1.16's ORPOTrainer.get_batch_loss_metrics (trl.experimental.orpo)."""
    from trl.experimental.orpo import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)
    trainer.__dict__.update(beta=orpo_lambda, accelerator=_accelerator(), is_encoder_decoder=False, padding_value=0,
                            aux_loss_enabled=False)
    return trainer.get_batch_loss_metrics(model, trl_pair_batch(pairs))


def trl_simpo(model, beta: float, gamma: float, pairs=PAIRS):
    """TRL 1.16's CPOTrainer.get_batch_loss_metrics with loss_type simpo and cpo_alpha 0 (pure SimPO)."""
    from trl.experimental.cpo import CPOTrainer

    trainer = object.__new__(CPOTrainer)
    trainer.__dict__.update(beta=beta, simpo_gamma=gamma, loss_type="simpo", cpo_alpha=0.0, alpha=0.0, label_smoothing=0.0,
                            accelerator=_accelerator(), is_encoder_decoder=False, pad_token_id=0, aux_loss_enabled=False)
    return trainer.get_batch_loss_metrics(model, trl_pair_batch(pairs))


STATS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def assert_same(loss, stats, trl_loss, trl_stats):
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for name in STATS:
        assert float(stats[name]) == pytest.approx(float(trl_stats[name]), abs=1e-5), name


@pytest.mark.parametrize("loss_type, label_smoothing, trl_loss_type", [
    ("sigmoid", 0.0, "sigmoid"), ("sigmoid", 0.2, "robust"), ("ipo", 0.0, "ipo"), ("hinge", 0.0, "hinge")])
def test_dpo_with_a_frozen_reference_equals_trl(loss_type, label_smoothing, trl_loss_type):
    base = tiny_gpt2()
    policy, reference = nudged(base), frozen_reference(base)
    beta = 0.3
    pc = PreferenceConfig(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    loss, stats = ours(pc, "dpo", policy, reference)
    trl_loss, trl_stats = trl_dpo(policy, reference, trl_loss_type, beta, label_smoothing)
    assert_same(loss, stats, trl_loss, trl_stats)
    assert float(stats["rewards/margins"]) != 0  # the policy is not its reference


def test_dpo_under_lora_equals_trl_with_adapters_disabled_as_reference():
    model = with_adapters(tiny_gpt2())
    pc = PreferenceConfig(beta=0.5)
    loss, stats = ours(pc, "dpo", model, None)
    trl_loss, trl_stats = trl_dpo(model, None, "sigmoid", 0.5)
    assert_same(loss, stats, trl_loss, trl_stats)
    assert float(stats["rewards/margins"]) != 0


def test_simpo_equals_trl():
    model = tiny_gpt2()
    loss, stats = ours(PreferenceConfig(beta=2.5, simpo_gamma=0.7), "simpo", model, None)
    trl_loss, trl_stats = trl_simpo(model, 2.5, 0.7)
    assert_same(loss, stats, trl_loss, trl_stats)


def test_orpo_equals_trl():
    # TRL's ORPOTrainer takes the NLL over prompt and reply; ours, as the ORPO paper, over the reply:
    # with one-token prompts (never a target) the two are the same loss.
    model = tiny_gpt2()
    loss, stats = ours(PreferenceConfig(orpo_lambda=0.4), "orpo", model, None, ONE_TOKEN_PROMPTS)
    trl_loss, trl_stats = trl_orpo(model, 0.4, ONE_TOKEN_PROMPTS)
    assert_same(loss, stats, trl_loss, trl_stats)


def test_orpo_odds_ratio_term_equals_trl_with_longer_prompts():
    model = tiny_gpt2()
    loss, stats = ours(PreferenceConfig(orpo_lambda=0.4), "orpo", model, None, PAIRS)
    trl_loss, trl_stats = trl_orpo(model, 0.4, PAIRS)
    inputs, targets = PreferenceBatches(PAIRS).batch(range(len(PAIRS)))
    with torch.no_grad():
        logits = model(input_ids=inputs[:3]).logits
    reply_nll = F.cross_entropy(logits.reshape(-1, VOCAB), targets[:3].reshape(-1))
    assert (loss - reply_nll).item() == pytest.approx(trl_loss.item() - trl_stats["nll_loss"], abs=1e-5)
    for name in STATS:
        assert float(stats[name]) == pytest.approx(trl_stats[name], abs=1e-5)


# ----------------------------------------------------------------------------- the pieces
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sequence_logps_is_the_sum_over_scored_positions(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 7, VOCAB, generator=generator)).to(dtype)
    targets = torch.randint(VOCAB, (4, 7), generator=generator)
    targets[0, :3] = -100
    targets[2, 5:] = -100
    targets[3, :] = -100
    sums, counts = sequence_logps(logits, targets)
    assert sums.dtype == torch.float32 and counts.tolist() == [4, 7, 5, 0]
    for row in range(4):
        expected = sum(torch.log_softmax(logits[row, t].float(), -1)[targets[row, t]].item()
                       for t in range(7) if targets[row, t] != -100)
        assert sums[row].item() == pytest.approx(expected, abs=1e-4)


def test_the_lora_reference_is_the_base_model():
    base = tiny_gpt2()
    untouched = copy.deepcopy(base)
    model = with_adapters(base)
    inputs, targets = PreferenceBatches(PAIRS).batch(range(3))
    with torch.no_grad():
        expected = sequence_logps(untouched(input_ids=inputs).logits, targets)[0]
        policy = sequence_logps(model(input_ids=inputs).logits, targets)[0]
    got = reference_logps(model, None, inputs, targets)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(policy, expected, atol=1e-3)  # the adapters do change the policy
    assert model.training  # the reference pass leaves the mode as it found it


@pytest.mark.parametrize("method, weights", [("dpo", "lora"), ("dpo", "full"), ("orpo", "lora"), ("simpo", "full")])
def test_one_forward_over_chosen_and_rejected(method, weights):
    base = tiny_gpt2()
    reference = frozen_reference(base) if (method, weights) == ("dpo", "full") else None
    model = with_adapters(base) if weights == "lora" else base
    transformer = model.get_base_model() if weights == "lora" else model
    rows = []
    hooks = [m.register_forward_pre_hook(lambda module, args, kwargs: rows.append(kwargs["input_ids"].size(0)), with_kwargs=True)
             for m in (transformer, reference) if m is not None]
    loss, _ = ours(PreferenceConfig(), method, model, reference)
    loss.backward()
    for hook in hooks:
        hook.remove()
    # The policy once over all 2B rows; DPO adds one reference pass (adapters disabled, or the frozen copy).
    assert rows == [6, 6] if method == "dpo" else rows == [6]
    assert reference is None or all(p.grad is None for p in reference.parameters())


@pytest.mark.parametrize("method, weights", [("dpo", "lora"), ("dpo", "full"), ("orpo", "full"), ("simpo", "lora")])
def test_a_few_steps_on_one_pair_raise_its_margin(method, weights):
    base = tiny_gpt2()
    reference = frozen_reference(base) if (method, weights) == ("dpo", "full") else None
    model = with_adapters(base) if weights == "lora" else base
    if weights == "lora":  # adapters that start as peft starts them: the policy is the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.zeros_(p)
    pair = [PAIRS[1]]
    pc = PreferenceConfig()
    objective = preference_loss_fn(pc, method, reference)
    batch = PreferenceBatches(pair).batch([0])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    margins = []
    for _ in range(6):
        optimizer.zero_grad()
        with loss_stats.collect() as reported:
            objective(model, batch, "model").backward()
        margins.append(float(reported["rewards/margins"][0]))
        optimizer.step()
    with loss_stats.collect() as reported:
        objective(model, batch, "model")
    if method == "dpo":
        assert margins[0] == 0.0  # policy == reference at the start
    assert float(reported["rewards/margins"][0]) > margins[0] + 0.05
    assert float(reported["rewards/accuracies"][0]) == 1.0


def tiny_llama(attention_dropout: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=32, attention_dropout=attention_dropout))


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_dropout_is_off_in_preference_passes_and_back_on_after(architecture):
    if architecture == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        base = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                          resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    else:
        base = tiny_llama(attention_dropout=0.5)
    base.train()
    before = {name: (m.p if hasattr(m, "p") else m.attention_dropout) for name, m in base.named_modules()
              if isinstance(m, torch.nn.Dropout) or isinstance(getattr(m, "attention_dropout", None), float)}
    assert before and all(value > 0 for value in before.values())
    reference = frozen_reference(base)
    first, stats = ours(PreferenceConfig(), "dpo", base, reference)
    second, _ = ours(PreferenceConfig(), "dpo", base, reference)
    assert first.item() == second.item() and stats["rewards/margins"].item() == 0.0  # the policy is still its reference
    noisy = [ours(PreferenceConfig(disable_dropout=False), "simpo", base, None)[0].item() for _ in range(2)]
    assert noisy[0] != noisy[1]
    after = {name: (m.p if hasattr(m, "p") else m.attention_dropout) for name, m in base.named_modules() if name in before}
    assert after == before and base.training


def test_a_dpo_reference_must_be_frozen_and_lora_needs_a_peft_model():
    with pytest.raises(ValueError, match="must be frozen"):
        preference_loss_fn(PreferenceConfig(), "dpo", tiny_gpt2())
    with pytest.raises(ValueError, match="a DPO reference is needed"):
        ours(PreferenceConfig(), "dpo", tiny_gpt2(), None)


def test_the_backend_wrapper_keeps_everything_but_the_loss():
    from aigc_cli.backends import gpt

    objective = preference_loss_fn(PreferenceConfig(), "simpo")
    backend = PreferenceBackend(gpt, objective)
    assert backend.loss is objective and backend.save is gpt.save and backend.parameters is gpt.parameters


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("finetune, message", [
    ({"method": "orpo", "preference": {"beta": 0.2}}, "finetune.preference.beta does not apply to method orpo: ORPO's weight is finetune.preference.orpo_lambda"),
    ({"method": "simpo", "preference": {"loss_type": "ipo"}}, "finetune.preference.loss_type applies to method dpo only, not to method simpo"),
    ({"method": "dpo", "preference": {"loss_type": "hinge", "label_smoothing": 0.1}},
     "label_smoothing applies to method dpo with loss_type sigmoid only, not to method dpo with loss_type hinge"),
    ({"method": "dpo", "preference": {"simpo_gamma": 1.0}}, "simpo_gamma applies to method simpo only, not to method dpo"),
    ({"method": "simpo", "preference": {"orpo_lambda": 1.0}}, "orpo_lambda applies to method orpo only, not to method simpo"),
    ({"method": "dpo", "source_file": "s.txt"}, "finetune.source_file holds prompt/response lines; method dpo needs preference records"),
    ({"method": "dpo", "preference": {"label_smoothing": 0.5}}, "finetune.preference.label_smoothing"),
])
def test_preference_settings_that_would_be_ignored_are_errors(finetune, message):
    with pytest.raises(AigcError, match=message.replace(".", r"\.")):
        validate_config({"finetune": finetune})


def test_preference_defaults_per_method():
    cfg = validate_config({"finetune": {"method": "simpo"}}).finetune.preference
    assert (cfg.weights, cfg.beta_for("dpo"), cfg.beta_for("simpo"), cfg.simpo_gamma, cfg.orpo_lambda) == ("lora", 0.1, 2.0, 0.5, 0.1)
    assert validate_config({"finetune": {"method": "lora", "preference": {"beta": 0.3}}}).finetune.preference.beta_for("simpo") == 0.3


def test_a_preference_config_error_exits_2(cli, tmp_path):
    path = tmp_path / "dpo.yaml"
    path.write_text("finetune: {base: nowhere, method: orpo, preference: {beta: 0.2}}\n", encoding="utf-8")
    result = cli("finetune", path)
    assert result.exit_code == 2 and "ORPO's weight is finetune.preference.orpo_lambda" in result.stderr


# ----------------------------------------------------------------------------- through the loop
@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny-gpt2"
    tiny_gpt2().save_pretrained(path)
    return path


def dpo_lora_job(base_dir):
    from aigc_cli.backends import gpt, lora
    from aigc_cli.config import LoraConfig
    from aigc_cli.training.recipe import TrainingJob

    backend = PreferenceBackend(lora, preference_loss_fn(PreferenceConfig(beta=0.5), "dpo"))

    def make_model(previous, device):
        if previous is not None:
            return backend.load(previous, device, trainable=True)
        return backend.add_adapters(gpt.load_pretrained(base_dir), LoraConfig(r=4, alpha=8, dropout=0.0))

    data = PreferenceBatches(PAIRS * 2)
    return TrainingJob("lora", backend, make_model, data, PreferenceBatches(PAIRS), 32, None, verb="finetune")


def loop_config(out_dir, max_steps):
    return validate_config({"finetune": {"method": "dpo"}, "train": {
        "out_dir": str(out_dir), "max_steps": max_steps, "lr_decay_steps": 4, "batch_size": 2, "learning_rate": 2e-2, "warmup_steps": 0,
        "eval_every": 2, "eval_batches": 2, "save_every": 2, "log_every": 1, "sample_every_eval": False, "precision": "fp32"}})


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_loop_logs_rewards_and_resumes_exactly(base_dir, tmp_path):
    from aigc_cli.training.loop import run_training

    straight = run_training(loop_config(tmp_path / "straight", 4), dpo_lora_job(base_dir), quiet=True)
    rows = rows_of(tmp_path / "straight")
    train_rows = [r for r in rows if "train_loss" in r]
    val_rows = [r for r in rows if "val_loss" in r]
    assert len(train_rows) == 4 and all(set(STATS) <= set(r) for r in train_rows)
    assert [r["step"] for r in val_rows] == [0, 2, 4] and all({f"val_{n}" for n in STATS} <= set(r) for r in val_rows)
    assert val_rows[0]["val_rewards/margins"] == 0.0 and val_rows[0]["val_loss"] == pytest.approx(0.6931472, abs=1e-6)  # log 2
    # Held-out reward accuracy rises from 0 (the policy starts as its reference: no pair is won).
    assert val_rows[-1]["val_rewards/margins"] > 0.1 and val_rows[-1]["val_rewards/accuracies"] > val_rows[0]["val_rewards/accuracies"]
    out = straight.to_json()
    assert out["stats"]["val_rewards/accuracies"] == val_rows[-1]["val_rewards/accuracies"]
    assert out["stats"]["rewards/margins"] == train_rows[-1]["rewards/margins"]
    assert any(line.startswith("validation: rewards/accuracies") for line in straight.summary_lines())

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "straight"))
    events.Reload()
    assert {"rewards/accuracies", "val_rewards/margins", "loss/train"} <= set(events.Tags()["scalars"])

    run_training(loop_config(tmp_path / "resumed", 2), dpo_lora_job(base_dir), quiet=True)
    resumed = run_training(loop_config(tmp_path / "resumed", 4), dpo_lora_job(base_dir), resume=True, quiet=True)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rs]
    assert strip(rows_of(tmp_path / "resumed")) == strip(rows)
    assert resumed.stats == straight.stats


def test_finetune_refuses_a_preference_method_on_records_without_chosen_and_rejected(cli, base_dir, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="t2").save_pretrained(base_dir)
    (tmp_path / "pairs.jsonl").write_text('{"source": "t5", "target": "t6"}\n' * 4, encoding="utf-8")
    path = tmp_path / "dpo.yaml"
    path.write_text(f"finetune: {{base: {base_dir}, method: dpo, train_file: {tmp_path / 'pairs.jsonl'}}}\n"
                    f"train: {{out_dir: {tmp_path / 'run'}}}\n", encoding="utf-8")
    result = cli("finetune", path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.stderr
    assert "finetune.method dpo learns from preference pairs (prompt, chosen, rejected), but" in errors[0] and "holds pairs records" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists()
