"""Sequence classifiers: transformers' AutoModelForSequenceClassification, trained on labelled texts.

Built from sizes, the encoder is BERT (BertConfig) with random weights over aigc's own tokenizer;
from model.init_from, any pretrained encoder transformers knows, with a fresh head. The task
(single_label, multi_label, regression) is the config's `problem_type`, the labels its
id2label/label2id, so a checkpoint is a plain transformers model directory:
pipeline("text-classification", model=checkpoint) loads it unchanged. aigc's own settings travel
in config.json too (aigc_class_weights, aigc_thresholds, aigc_max_length), which transformers ignores.

A batch is ((ids, attention mask), targets): label ids (single_label), 0/1 rows (multi_label) or
numbers (regression). LoRA (peft task type SEQ_CLS, the head in modules_to_save) saves the merged
model at the top of the checkpoint, the adapter in adapter/ (what a resumed run continues).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from aigc_cli.backends.gpt import _quiet_transformers
from aigc_cli.errors import AigcError

PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification", "regression": "regression"}
TASKS = {v: k for k, v in PROBLEM_TYPES.items()}
ADAPTER_DIR = "adapter"


def bert_config(mc: Any, data_meta: dict):
    """The BERT encoder of model.* sizes over aigc's tokenizer (every labels backend built from sizes)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=data_meta["vocab_size"], hidden_size=mc.n_embd, num_hidden_layers=mc.n_layer,
                      num_attention_heads=mc.n_head, intermediate_size=mc.intermediate_size or 4 * mc.n_embd,
                      max_position_embeddings=mc.max_length, hidden_dropout_prob=mc.dropout,
                      attention_probs_dropout_prob=mc.dropout, pad_token_id=data_meta["pad_id"], type_vocab_size=1)


def build(model_cfg: Any, data_meta: dict) -> torch.nn.Module:
    """A BERT encoder of model.* sizes with random weights and a head over data_meta's labels."""
    from transformers import BertForSequenceClassification

    _quiet_transformers()
    config = bert_config(model_cfg, data_meta)
    describe(config, model_cfg, data_meta)
    return BertForSequenceClassification(config)


def describe(config, mc: Any, data_meta: dict) -> None:
    """Task, labels and aigc's loss settings into a transformers config."""
    labels = data_meta["labels"]
    config.problem_type = PROBLEM_TYPES[mc.task]
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.aigc_class_weights = data_meta.get("class_weights")
    config.aigc_thresholds = [mc.thresholds.get(n, mc.threshold) for n in labels] if mc.task == "multi_label" else None
    config.aigc_max_length = mc.max_length


def pretrained_model(auto_class: str, ref: str, describe_config, what: str, data_meta: dict, device: str) -> torch.nn.Module:
    """model.init_from's pretrained model as transformers' `auto_class`, its config first passed to
    `describe_config` (task and labels: a fresh head where they differ); a clear error when it cannot load."""
    import transformers

    _quiet_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(ref)
        describe_config(config)
        model = getattr(transformers, auto_class).from_pretrained(ref, config=config, use_safetensors=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "check the directory" if Path(ref).exists() else "offline (HF_HUB_OFFLINE) or unknown hub id: pass a local model directory"
        raise AigcError(f"cannot load model.init_from {ref} as {what}: {first}", hint) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = data_meta["pad_id"]
    return model.to(device)


def pretrained(ref: str, mc: Any, data_meta: dict, device: str) -> torch.nn.Module:
    """model.init_from's pretrained encoder with a fresh head for data_meta's labels."""
    return pretrained_model("AutoModelForSequenceClassification", ref, lambda config: describe(config, mc, data_meta),
                            "a sequence classifier", data_meta, device)


def lora_model(model: torch.nn.Module, lora_cfg, task_type: str, modules_to_save) -> torch.nn.Module:
    """`model` with finetune.lora's adapters for peft's `task_type` (its head trained in full, in modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type=task_type, r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=lora_cfg.target_modules, use_rslora=lora_cfg.rslora, use_dora=lora_cfg.dora,
                        modules_to_save=modules_to_save)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise AigcError(f"cannot add LoRA adapters: {exc}", "set finetune.lora.target_modules to module names of this model") from None


def add_adapters(model: torch.nn.Module, lora_cfg) -> torch.nn.Module:
    """LoRA adapters (peft SEQ_CLS: the classification head is trained in full and saved with them)."""
    return lora_model(model, lora_cfg, "SEQ_CLS", lora_cfg.modules_to_save)


def load_adapter(base: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    """The adapter of a LoRA checkpoint on `base`, trainable (a resumed run)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, checkpoint / ADAPTER_DIR, is_trainable=True)


def parameters(model: torch.nn.Module, part: str) -> Iterable[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _config(model: torch.nn.Module):
    return model.config if not hasattr(model, "peft_config") else model.get_base_model().config


def logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits


def task_loss(config, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The task's loss, with the class weights config.json carries."""
    task = TASKS[config.problem_type]
    weights = getattr(config, "aigc_class_weights", None)
    weights = torch.tensor(weights, dtype=torch.float32, device=out.device) if weights else None
    if task == "single_label":
        return F.cross_entropy(out.float(), targets, weight=weights)
    if task == "multi_label":
        return F.binary_cross_entropy_with_logits(out.float(), targets.float(), pos_weight=weights)
    return F.mse_loss(out.float().squeeze(-1), targets.float())


def loss(model: torch.nn.Module, batch: tuple[Any, torch.Tensor], part: str) -> torch.Tensor:
    from aigc_cli.training.loss_stats import report

    (ids, mask), targets = batch
    out = logits(model, ids, mask)
    config = _config(model)
    value = task_loss(config, out, targets)
    if config.problem_type == PROBLEM_TYPES["single_label"]:
        report({"accuracy": (out.argmax(-1) == targets).float().mean()})
    return value


def scores(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (single_label), sigmoid ones (multi_label) or the value (regression)."""
    out = logits(model, ids, mask).float()
    task = TASKS[_config(model).problem_type]
    if task == "single_label":
        return out.softmax(-1)
    return out.sigmoid() if task == "multi_label" else out.squeeze(-1)


def save(model: torch.nn.Module, directory: Path) -> None:
    if hasattr(model, "peft_config"):  # LoRA: the merged model loads anywhere; the adapter resumes the run
        model.save_pretrained(directory / ADAPTER_DIR)
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(directory)
        return
    model.save_pretrained(directory)


def load(directory: Path, device: str) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    _quiet_transformers()
    return AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True).to(device)


def context_length(model: torch.nn.Module) -> int | None:
    config = _config(model)
    longest = getattr(config, "max_position_embeddings", None)
    own = getattr(config, "aigc_max_length", None)
    return min(x for x in (longest, own) if x) if (longest or own) else None
