"""The backend registry: every model family is declared here once, and nothing here imports torch.

A family is one module with the functions of `TextBackend` or `ImageBackend` (Protocols, never
base classes) plus one entry below: its `model:` config section and a `BackendSpec` naming the
module and what it can do. Everything else is derived from BACKENDS — the config's `model`
union and the text/image split (config.py), FSDP support (distributed.py), what `aigc info`
reads (runs/inspection.py), which backend wrote a directory (`backend_of_checkpoint`) — and no
code asks a module what it can do: an optional ability is declared in the spec, and
tests/backends/test_contract.py checks that every module implements what its spec declares.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Optional, Protocol, runtime_checkable

from pydantic import Field, model_validator

from aigc_cli.config_section import Section
from aigc_cli.errors import AigcError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a family's checkpoint describes itself, read by `aigc info` without torch."""

    config: str = "config.json"
    """The JSON file describing the architecture."""
    fields: Optional[dict[str, str]] = None
    """Shown name → key in `config` (None: the usual size keys that are there)."""
    weights: str = "."
    """The folder whose *.safetensors headers give the parameter count."""
    base_model: Optional[str] = None
    """The key in `config` naming a base model directory, whose parameters are counted too."""
    marker: Optional[str] = None
    """The file that identifies such a directory written by another tool (no aigc.json)."""


@dataclass(frozen=True)
class BackendSpec:
    """A family's declaration: everything outside its module that needs to know it reads this."""

    module: str
    """Imported by get_backend only, when a verb needs the family."""
    modality: Literal["text", "image", "labels"]
    """text: samples tokens; image: samples images; labels: predicts labels or scores for texts (classifiers)."""
    config: Optional[type[Section]]
    """The `model:` section (None: made by another verb, never by `aigc train`)."""
    parts: tuple[str, ...] = ("model",)
    """Independently optimised parts: one AdamW each, stepped in this order on the same batch."""
    validation_part: str = ""
    """The part whose loss is the validation loss (default: the first)."""
    validation_label: str = "loss"
    """What that validation loss is, in words (declared for summaries; none shows it yet, so output is as before)."""
    cpu_bf16: bool = False
    """train.precision=auto takes bf16 on CPUs with native bf16: measured faster at the same loss."""
    fsdp: bool = False
    """train.strategy=fsdp works: the model shards, one optimizer, nothing reads full weights between steps."""
    ema: bool = False
    """Keeps an average of its weights: the module has after_step (UpdatesAfterStep), called after every step."""
    reconstructs: bool = False
    """Has an encoder: the module has reconstruct (Reconstructs), for generate.images.reconstruct."""
    padded_decoding: bool = False
    """Decodes a left-padded batch at once: the module has padded_next_token_logits (DecodesPadded)."""
    init_from: bool = False
    """`aigc train` can start from a pretrained model (its section's init_from): the module has start_from (StartsFromPretrained)."""
    prompted: bool = False
    """Samples images from text prompts: the module has sample_prompts, tokenize and as_data_channels (SamplesFromPrompts), for `generate --prompt`."""
    recipe: Optional[str] = None
    """`aigc train` runs this module's train_model(cfg, resume, quiet) instead of one job on the prepared data (several jobs in sequence)."""
    files: CheckpointFiles = field(default_factory=CheckpointFiles)

    def __post_init__(self):
        object.__setattr__(self, "validation_part", self.validation_part or self.parts[0])
        if self.validation_part not in self.parts:
            raise ValueError(f"validation_part {self.validation_part!r} is not one of the parts {self.parts}")


BACKENDS: dict[str, BackendSpec] = {}


# ----------------------------------------------------------------------------- text
class GPTModelConfig(Section):
    backend: Literal["gpt"] = Field("gpt", description="Model family (the default when the key is left out).")
    architecture: Literal["gpt2", "llama"] = Field("gpt2", description="Transformers architecture to instantiate with random weights.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, description="Attention heads (n_embd must divide by it).")
    n_kv_head: Optional[int] = Field(None, ge=1, description="llama only: key/value heads for grouped-query attention (default n_head).")
    n_embd: int = Field(128, ge=1, description="Hidden size.")
    intermediate_size: Optional[int] = Field(None, ge=1, description="MLP width (default 4×n_embd for gpt2, 8/3×n_embd rounded for llama).")
    block_size: int = Field(64, ge=2, description="Context length in tokens.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, attention and residuals (with init_from: left out, the model's own; given, it replaces the model's).")
    init_from: Optional[str] = Field(None, description="Continued pretraining: start `aigc train` from this causal LM instead of random weights — a Hugging Face model directory (GPT-2, Llama, Qwen, ...), a checkpoint or run directory of `aigc train` (its latest checkpoint), or a hub id when online. Its config.json sets architecture, n_layer, n_head, n_kv_head, n_embd and intermediate_size: leave them out or give the model's values (any other is exit 2). block_size, the training window, must be at most its context. Prepare the data with data.tokenizer.kind=pretrained.")
    trust_remote_code: bool = Field(False, description="With init_from: allow a hub model's own Python code to run. Off unless you trust the source.")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_kv_head and self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        return self


# cpu_bf16: measured faster at the same loss (README: Training). A checkpoint is a transformers
# model directory, so one from elsewhere (config.json alone) is a gpt too.
BACKENDS["gpt"] = BackendSpec("aigc_cli.backends.gpt", "text", GPTModelConfig, cpu_bf16=True, fsdp=True,
                              padded_decoding=True, init_from=True, files=CheckpointFiles(marker="config.json"))


class RNNModelConfig(Section):
    backend: Literal["rnn"] = Field("rnn", description="Model family.")
    cell: Literal["lstm", "gru", "rnn"] = Field("lstm", description="Recurrent cell.")
    n_layer: int = Field(2, ge=1, description="Stacked recurrent layers.")
    n_embd: int = Field(128, ge=1, description="Embedding size.")
    hidden_size: int = Field(256, ge=1, description="Recurrent state size.")
    block_size: int = Field(64, ge=2, description="Training sequence length (truncated backpropagation through time).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on embeddings, between layers and before the output.")


# No cpu_bf16: the LSTM ran faster in bf16 but to a worse loss (README: Training).
# No padded decoding: padding would flow through the recurrent state.
BACKENDS["rnn"] = BackendSpec("aigc_cli.backends.rnn", "text", RNNModelConfig, fsdp=True)


class BigramModelConfig(Section):
    backend: Literal["bigram"] = Field("bigram", description="nanoGPT's bigram model: the next token's logits are the current token's table row (a baseline).")
    block_size: int = Field(64, ge=2, description="Training sequence length (each token is predicted from the one before it alone).")


BACKENDS["bigram"] = BackendSpec("aigc_cli.backends.bigram", "text", BigramModelConfig)


# Made by `aigc finetune` from a gpt (its settings are finetune.lora), never by `aigc train`.
# A checkpoint is peft's adapter directory, naming the base model it needs.
BACKENDS["lora"] = BackendSpec(
    "aigc_cli.backends.lora", "text", None, cpu_bf16=True, fsdp=True, padded_decoding=True,
    files=CheckpointFiles(config="adapter_config.json", base_model="base_model_name_or_path", marker="adapter_config.json",
                          fields={"peft_type": "peft_type", "r": "r", "lora_alpha": "lora_alpha", "target_modules": "target_modules",
                                  "modules_to_save": "modules_to_save", "base_model": "base_model_name_or_path"}))


# ----------------------------------------------------------------------------- labels
class ClassifierModelConfig(Section):
    backend: Literal["classifier"] = Field("classifier", description="Sequence classification (transformers AutoModelForSequenceClassification): a BERT-style encoder built from the sizes below with random weights, or model.init_from's pretrained one, with a head over the labels of data.source's records (data.jsonl_field holds the text, data.label_field the label). Trained by `aigc train` straight from the records (no `aigc prep`); `aigc generate` predicts labels, `aigc eval` scores them.")
    task: Literal["single_label", "multi_label", "regression"] = Field("single_label", description="single_label: one label per text (softmax, cross-entropy); multi_label: any number of labels (a list, or names joined by commas; sigmoid, binary cross-entropy, model.threshold); regression: one number (mean squared error).")
    labels: Optional[list[str]] = Field(None, description="The label names in id order (null: the names found in the training records, sorted; integer labels 0..K-1 are ids into this list). Written into the checkpoint's config.json as id2label/label2id.")
    class_weights: Literal["none", "balanced"] = Field("none", description="Class imbalance: balanced weighs each label's loss by n_examples / (n_labels × its count), scikit-learn's 'balanced' (single_label: cross-entropy weights; multi_label: positive weights).")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="multi_label: a label is predicted when its sigmoid probability reaches this.")
    thresholds: dict[str, float] = Field(default_factory=dict, description="multi_label: per-label thresholds overriding model.threshold, e.g. {spam: 0.3}.")
    n_layer: int = Field(2, ge=1, description="Encoder layers (random init; with init_from, the model's own).")
    n_head: int = Field(2, ge=1, description="Attention heads (n_embd must divide by it).")
    n_embd: int = Field(64, ge=1, description="Hidden size.")
    intermediate_size: Optional[int] = Field(None, ge=1, description="MLP width (default 4×n_embd).")
    max_length: int = Field(128, ge=4, description="Texts are cut to this many tokens (random init: also the position table's size).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout of the encoder built from sizes (a pretrained one keeps its own).")
    init_from: Optional[str] = Field(None, description="A pretrained model to fine-tune instead of random weights: a local Hugging Face model directory (an encoder: BERT, RoBERTa, ... or a checkpoint of this backend; or a causal LM: GPT-2, Llama, a checkpoint of aigc's gpt backend, whose head reads the last non-pad token, config.pad_token_id set to the tokenizer's pad) or a hub id when online; its tokenizer is used (data.tokenizer is then ignored). A fresh classification head is put on it.")
    method: Literal["full", "lora"] = Field("full", description="full: train every weight; lora: LoRA adapters (rank etc. from finetune.lora; peft task type SEQ_CLS) with the head trained in full. lora needs init_from. Checkpoints hold the merged model (loads anywhere) and the adapter in adapter/.")

    @model_validator(mode="after")
    def _fits(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.method == "lora" and not self.init_from:
            raise ValueError("model.method=lora trains adapters on a pretrained encoder: set model.init_from (or use method full)")
        return self


# A checkpoint is a transformers model directory (config.json with id2label): pipeline("text-classification") loads it.
BACKENDS["classifier"] = BackendSpec("aigc_cli.backends.classifier", "labels", ClassifierModelConfig)


class TaggerModelConfig(Section):
    backend: Literal["tagger"] = Field("tagger", description="Token classification (transformers AutoModelForTokenClassification) for BIO/IOB2 tags, e.g. named entities: the encoder as for classifier, a tag per word. data.source is a CoNLL-style column file (a token per line, its tag in the last column, a blank line between sentences; .conll/.txt/.tsv) or JSONL/CSV/Parquet records with data.tokens_field and data.tags_field lists. Each word's first sub-word token carries its tag, the others -100 (not scored). Trained by `aigc train` (no prep); `aigc generate` tags words and gives entity spans; `aigc eval` reports entity-level precision/recall/F1 (seqeval's definition).")
    labels: Optional[list[str]] = Field(None, description="The tags in id order (null: those in the training data, O first, then sorted). Written into config.json as id2label/label2id.")
    class_weights: Literal["none", "balanced"] = Field("none", description="Rare tags: balanced weighs each tag's loss by n_tagged_words / (n_tags × its count), scikit-learn's 'balanced', so a tag on a few words in thousands (numbers among prose) is learned; none: every word alike.")
    n_layer: int = Field(2, ge=1, description="Encoder layers (random init; with init_from, the model's own).")
    n_head: int = Field(2, ge=1, description="Attention heads (n_embd must divide by it).")
    n_embd: int = Field(64, ge=1, description="Hidden size.")
    intermediate_size: Optional[int] = Field(None, ge=1, description="MLP width (default 4×n_embd).")
    max_length: int = Field(128, ge=4, description="Sentences are cut to this many tokens (random init: also the position table's size).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout of the encoder built from sizes.")
    init_from: Optional[str] = Field(None, description="A pretrained encoder to fine-tune (a local Hugging Face model directory or a hub id when online); its tokenizer is used.")
    method: Literal["full", "lora"] = Field("full", description="full: every weight; lora: LoRA adapters (finetune.lora; peft TOKEN_CLS) with the head in full. lora needs init_from.")

    @model_validator(mode="after")
    def _fits(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.method == "lora" and not self.init_from:
            raise ValueError("model.method=lora trains adapters on a pretrained encoder: set model.init_from (or use method full)")
        return self


# A checkpoint is a transformers model directory: pipeline("token-classification") loads it.
BACKENDS["tagger"] = BackendSpec("aigc_cli.backends.tagger", "labels", TaggerModelConfig)


class RewardModelConfig(Section):
    backend: Literal["reward"] = Field("reward", description="A reward model: an encoder (as for classifier) with a scalar head, trained on preference pairs of data.source (prompt/chosen/rejected records, fields as finetune.columns says) with the Bradley–Terry loss -log σ(r(chosen) - r(rejected)), TRL RewardTrainer's. A text it scores is the prompt, a newline and the reply. Trained by `aigc train` (no prep); `aigc generate` gives scores; `aigc eval` the reward accuracy on held-out pairs.")
    n_layer: int = Field(2, ge=1, description="Encoder layers (random init; with init_from, the model's own).")
    n_head: int = Field(2, ge=1, description="Attention heads (n_embd must divide by it).")
    n_embd: int = Field(64, ge=1, description="Hidden size.")
    intermediate_size: Optional[int] = Field(None, ge=1, description="MLP width (default 4×n_embd).")
    max_length: int = Field(256, ge=4, description="Prompt + reply cut to this many tokens (from the end, so the reply stays).")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout of the encoder built from sizes.")
    init_from: Optional[str] = Field(None, description="A pretrained model to start from (a local Hugging Face directory or a hub id when online), with a fresh scalar head; its tokenizer is used.")
    method: Literal["full", "lora"] = Field("full", description="full: every weight; lora: LoRA adapters (finetune.lora; peft SEQ_CLS) with the head in full. lora needs init_from.")

    @model_validator(mode="after")
    def _fits(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.method == "lora" and not self.init_from:
            raise ValueError("model.method=lora trains adapters on a pretrained model: set model.init_from (or use method full)")
        return self


# A checkpoint is a transformers sequence-classification directory with one output (problem_type regression).
BACKENDS["reward"] = BackendSpec("aigc_cli.backends.reward", "labels", RewardModelConfig)


# ----------------------------------------------------------------------------- image
class DDPMModelConfig(Section):
    backend: Literal["ddpm"] = Field("ddpm", description="Denoising diffusion: a diffusers UNet2DModel trained with DDPMScheduler.")
    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64, 64], min_length=1, description="UNet channels per resolution level (each level after the first halves the resolution).")
    layers_per_block: int = Field(1, ge=1, description="ResNet blocks per UNet level.")
    attention_levels: list[int] = Field(default_factory=lambda: [2], description="Levels (0-based) with self-attention blocks.")
    num_train_timesteps: int = Field(1000, ge=10, description="Diffusion steps of the noise schedule.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field("squaredcos_cap_v2", description="Noise schedule (squaredcos_cap_v2 is the improved-DDPM cosine schedule, better at small sizes).")
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = Field("epsilon", description="What the UNet predicts.")
    class_conditional: bool = Field(False, description="Condition on the class labels of the prepared data (needs labels).")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="Exponential moving average of the weights used for sampling and saved (0: off).")


# cpu_bf16: measured faster at the same loss. No fsdp: the EMA reads the full weights after
# every step. A checkpoint is a diffusers pipeline directory, the UNet's config in unet/.
BACKENDS["ddpm"] = BackendSpec(
    "aigc_cli.backends.ddpm", "image", DDPMModelConfig, parts=("unet",), cpu_bf16=True, ema=True,
    files=CheckpointFiles(config="unet/config.json", weights="unet", marker="model_index.json",
                          fields={"class": "_class_name", "sample_size": "sample_size", "in_channels": "in_channels",
                                  "block_out_channels": "block_out_channels", "num_class_embeds": "num_class_embeds"}))


class VAEModelConfig(Section):
    backend: Literal["vae"] = Field("vae", description="Convolutional variational autoencoder.")
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1, description="Encoder channels per stride-2 level (the decoder mirrors them).")
    latent_dim: int = Field(16, ge=1, description="Size of the latent vector.")
    kl_weight: float = Field(1.0, ge=0.0, description="Weight of the KL term against the summed per-pixel reconstruction loss (1.0: the ELBO; >1: beta-VAE).")
    reconstruction: Literal["bce", "mse"] = Field("bce", description="bce: Bernoulli likelihood of pixel intensities; mse: Gaussian.")


# No cpu_bf16: it gained 2 %.
BACKENDS["vae"] = BackendSpec("aigc_cli.backends.vae", "image", VAEModelConfig, parts=("vae",), fsdp=True, reconstructs=True)


class GANModelConfig(Section):
    backend: Literal["gan"] = Field("gan", description="DCGAN generator and discriminator, trained alternately.")
    latent_dim: int = Field(64, ge=1, description="Size of the generator's noise vector.")
    generator_channels: int = Field(64, ge=4, description="Generator width (channels at the last upsampling level × 2^levels at the first).")
    discriminator_channels: int = Field(64, ge=4, description="Discriminator width at its first level.")
    loss: Literal["bce", "hinge"] = Field("bce", description="bce: the original non-saturating GAN loss; hinge: the hinge loss of SN-GAN/BigGAN.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="One-sided: real targets are 1 - this (bce only).")


# The discriminator steps first (it learns first), and its loss is the one validated.
# cpu_bf16: measured faster, FID as in fp32. No fsdp: two optimizers.
BACKENDS["gan"] = BackendSpec("aigc_cli.backends.gan", "image", GANModelConfig, parts=("discriminator", "generator"),
                              validation_part="discriminator", validation_label="discriminator loss", cpu_bf16=True)


class LatentDiffusionModelConfig(Section):
    backend: Literal["latent-diffusion"] = Field("latent-diffusion", description="Text-to-image latent diffusion trained from scratch on captioned images (data.image.captions): a diffusers AutoencoderKL, then a UNet2DConditionModel on its frozen, scaled latents, conditioned on a CLIPTextModel that trains with the UNet, with a CLIP tokenizer aigc builds from the training captions' words. One `aigc train` runs both phases: the autoencoder in <train.out_dir>/autoencoder/ (autoencoder_steps), then the UNet in train.out_dir (train.max_steps). A checkpoint is a Stable Diffusion pipeline directory (StableDiffusionPipeline.from_pretrained loads it); `aigc generate --prompt` samples it.")
    autoencoder: Optional[str] = Field(None, description="A trained autoencoder to use instead of training one (phase 1 is skipped): a diffusers AutoencoderKL or VQModel directory (config.json + weights), a pipeline directory (its vae/), or a checkpoint or run directory of this backend. Its latent scale is measured again on the training images.")
    autoencoder_kind: Literal["kl", "vq"] = Field("kl", description="kl: diffusers' AutoencoderKL (Stable Diffusion's; the checkpoint samples in StableDiffusionPipeline); vq: diffusers' VQModel, a VQ-VAE whose decoder quantizes the latents to model.codebook_size codes (aigc samples it; StableDiffusionPipeline loads it but its own sampling passes the decoder an argument a VQModel does not take).")
    codebook_size: int = Field(256, ge=2, description="autoencoder_kind vq: codebook entries (VQModel num_vq_embeddings); the loss adds VQModel's commitment and codebook terms.")
    autoencoder_channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1, description="Autoencoder channels per level (each level after the first halves the resolution).")
    latent_channels: int = Field(4, ge=1, description="Channels of the latents the UNet denoises.")
    kl_weight: float = Field(1e-3, ge=0.0, description="kl: weight of the KL term (summed over each image's latents, divided by its pixel count) beside the per-pixel mean-squared reconstruction error.")
    autoencoder_steps: int = Field(1000, ge=1, description="Phase 1: optimizer steps of the autoencoder (its own cosine schedule, train.warmup_steps capped at a tenth of them).")
    autoencoder_learning_rate: float = Field(1e-3, gt=0.0, description="Phase 1: peak learning rate of the autoencoder.")
    unet_channels: list[int] = Field(default_factory=lambda: [64, 128], min_length=1, description="UNet channels per resolution level.")
    layers_per_block: int = Field(1, ge=1, description="ResNet blocks per UNet level.")
    attention_levels: list[int] = Field(default_factory=lambda: [0, 1], description="UNet levels (0-based) with cross-attention to the text (CrossAttnDown/UpBlock2D); at least one.")
    attention_head_dim: int = Field(8, ge=1, description="Channels per attention head in the UNet.")
    norm_num_groups: int = Field(8, ge=1, description="GroupNorm groups in the autoencoder and the UNet (every channel count must divide by it).")
    text_layers: int = Field(2, ge=1, description="CLIPTextModel transformer layers.")
    text_width: int = Field(64, ge=8, description="CLIPTextModel hidden size (also the UNet's cross_attention_dim).")
    text_heads: int = Field(4, ge=1, description="CLIPTextModel attention heads (text_width must divide by it).")
    max_prompt_tokens: int = Field(16, ge=4, le=512, description="Prompts are padded or cut to this many tokens (with start and end tokens): the text encoder's position table.")
    vocabulary_words: int = Field(4096, ge=1, description="The tokenizer spells the most frequent this-many caption words as single tokens; other words are spelled in bytes.")
    train_text_encoder: bool = Field(True, description="Train the text encoder with the UNet (what lets conditioning learn from scratch); false: it stays at its random initial weights.")
    num_train_timesteps: int = Field(1000, ge=10, description="Diffusion steps of the noise schedule.")
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = Field("scaled_linear", description="Noise schedule (scaled_linear with betas 0.00085..0.012 is Stable Diffusion's).")
    prediction_type: Literal["epsilon", "v_prediction"] = Field("epsilon", description="What the UNet predicts.")

    @model_validator(mode="after")
    def _fits(self):
        unet_levels = len(self.unet_channels)
        if not self.attention_levels or any(not 0 <= level < unet_levels for level in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} must name at least one of the UNet's levels 0..{unet_levels - 1}")
        odd = [c for c in self.autoencoder_channels + self.unet_channels if c % self.norm_num_groups]
        if odd:
            raise ValueError(f"channel counts {odd} do not divide by norm_num_groups={self.norm_num_groups}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width={self.text_width} is not divisible by text_heads={self.text_heads}")
        if any(c % self.attention_head_dim for i, c in enumerate(self.unet_channels) if i in self.attention_levels):
            raise ValueError(f"the channels of the attention levels must divide by attention_head_dim={self.attention_head_dim}")
        return self

    def downsampling(self) -> int:
        """How many times smaller than the images the UNet's smallest feature map is."""
        return 2 ** (len(self.autoencoder_channels) - 1) * 2 ** (len(self.unet_channels) - 1)


# The autoencoder trains first and validates its own loss in phase 1; phase 2 trains the UNet with the
# text encoder, whose diffusion loss is the model's validation loss (training/latent_diffusion.py: two
# jobs through the one loop). A checkpoint is a diffusers StableDiffusionPipeline directory. No cpu_bf16: bf16 autocast
# measured slower (a UNet step of the text-to-image starter, batch 64, one thread: 0.43 s against 0.25 s in fp32).
BACKENDS["latent-diffusion"] = BackendSpec(
    "aigc_cli.backends.latent_diffusion", "image", LatentDiffusionModelConfig, parts=("autoencoder", "unet"), validation_part="unet", reconstructs=True,
    prompted=True, recipe="aigc_cli.training.latent_diffusion",
    files=CheckpointFiles(config="unet/config.json", fields={"sample_size": "sample_size", "in_channels": "in_channels",
                                                             "block_out_channels": "block_out_channels",
                                                             "cross_attention_dim": "cross_attention_dim"}))


# Made by `aigc finetune` from a Stable-Diffusion-style pipeline directory (finetune.base), never by
# `aigc train`. A checkpoint is diffusers' LoRA weights file (or, fully fine-tuned, a pipeline) plus
# aigc_text_to_image.json naming the base pipeline. No cpu_bf16: LoRA fine-tune steps ran 0.60× as fast in
# bf16 as in fp32 at the same loss (scripts/bench/text_to_image.py's pipeline, docs/benchmarks.md). ema: after_step updates
# the EMA of finetune.text_to_image.ema_decay (a no-op when it is 0).
BACKENDS["text-to-image"] = BackendSpec(
    "aigc_cli.backends.text_to_image", "image", None, parts=("unet",), prompted=True, ema=True,
    files=CheckpointFiles(config="aigc_text_to_image.json", fields={"method": "method", "base": "base", "size": "size", "lora": "lora"}))


# ----------------------------------------------------------------------------- the contract
@runtime_checkable
class TextBackend(Protocol):
    """A language model: trained on token windows, sampled one token at a time."""

    def build(self, model_cfg: Any, data_meta: dict) -> "torch.nn.Module":
        """A freshly initialised model for the config section and the prepared data's vocab_size and eos_id."""

    def parameters(self, model: "torch.nn.Module", part: str) -> Iterable["torch.nn.Parameter"]:
        """The trainable parameters optimised under `part`."""

    def loss(self, model: "torch.nn.Module", batch: tuple["torch.Tensor", "torch.Tensor"], part: str) -> "torch.Tensor":
        """Mean next-token cross-entropy on one batch of (inputs, targets); targets of -100 are ignored."""

    def save(self, model: "torch.nn.Module", directory: Path) -> None:
        """Write the weights and the model's own config into `directory` (safetensors)."""

    def load(self, directory: Path, device: str) -> "torch.nn.Module":
        """Rebuild the model saved by `save` from the directory alone."""

    def next_token_logits(self, model: "torch.nn.Module", ids: "torch.Tensor", state: Any) -> tuple["torch.Tensor", Any]:
        """Logits (batch × vocab) for the token after `ids` (batch × T); `state` carries caches between calls."""

    def context_length(self, model: "torch.nn.Module") -> int | None:
        """Longest sequence the model accepts at once (None: unbounded)."""


@runtime_checkable
class ImageBackend(Protocol):
    """An image model: trained on (images in [-1, 1], class labels), sampled from noise."""

    def build(self, model_cfg: Any, data_meta: dict) -> "torch.nn.Module":
        """A freshly initialised model for the config section and the prepared images' size, channels and classes."""

    def parameters(self, model: "torch.nn.Module", part: str) -> Iterable["torch.nn.Parameter"]:
        """The trainable parameters optimised under `part`."""

    def loss(self, model: "torch.nn.Module", batch: tuple["torch.Tensor", "torch.Tensor"], part: str) -> "torch.Tensor":
        """Scalar training loss of `part` on one batch of (images, labels)."""

    def save(self, model: "torch.nn.Module", directory: Path) -> None:
        """Write the weights and the model's own config into `directory` (safetensors)."""

    def load(self, directory: Path, device: str) -> "torch.nn.Module":
        """Rebuild the model saved by `save` from the directory alone."""

    def image_info(self, model: "torch.nn.Module") -> dict:
        """{size, channels, classes, class_conditional} of the images the model makes."""

    def latent_shape(self, model: "torch.nn.Module") -> tuple[int, ...]:
        """The shape of one image's starting noise."""

    def sample(self, model: "torch.nn.Module", noise: "torch.Tensor", labels: "torch.Tensor | None", gen_cfg: Any,
               generators: list["torch.Generator"]) -> "torch.Tensor":
        """Images in [-1, 1] from `noise` (one row per image, each with its own generator)."""


@runtime_checkable
class LabelBackend(Protocol):
    """A classifier: trained on ((token ids, attention mask), labels), predicting labels for texts."""

    def build(self, model_cfg: Any, data_meta: dict) -> "torch.nn.Module":
        """A freshly initialised model for the config section and the data's vocab_size, pad_id and labels."""

    def parameters(self, model: "torch.nn.Module", part: str) -> Iterable["torch.nn.Parameter"]: ...

    def loss(self, model: "torch.nn.Module", batch: tuple[Any, "torch.Tensor"], part: str) -> "torch.Tensor":
        """The task's loss (cross-entropy, binary cross-entropy or squared error) on one batch."""

    def save(self, model: "torch.nn.Module", directory: Path) -> None: ...

    def load(self, directory: Path, device: str) -> "torch.nn.Module": ...

    def context_length(self, model: "torch.nn.Module") -> int | None: ...

    def scores(self, model: "torch.nn.Module", ids: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
        """Per text: probabilities (softmax or sigmoid by the task) or the regression value."""

    def pretrained(self, ref: str, mc: Any, data_meta: dict, device: str) -> "torch.nn.Module":
        """model.init_from's pretrained model with this task's head (a fresh one where the labels differ)."""

    def add_adapters(self, model: "torch.nn.Module", lora_cfg: Any) -> "torch.nn.Module": ...

    def load_adapter(self, base: "torch.nn.Module", checkpoint: Path) -> "torch.nn.Module": ...


@runtime_checkable
class UpdatesAfterStep(Protocol):
    """spec.ema: called after every optimizer step (the diffusion model's EMA update)."""

    def after_step(self, model: "torch.nn.Module") -> None: ...


@runtime_checkable
class Reconstructs(Protocol):
    """spec.reconstructs: the decoder's image of each input's encoding."""

    def reconstruct(self, model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor": ...


@runtime_checkable
class DecodesPadded(Protocol):
    """spec.padded_decoding: next_token_logits for a left-padded batch (`mask` is 0 on padding), with a
    transformers key/value cache as `state` (finished rows leave it by cache.batch_select_indices)."""

    def padded_next_token_logits(self, model: "torch.nn.Module", ids: "torch.Tensor", mask: "torch.Tensor",
                                 state: Any) -> tuple["torch.Tensor", Any]: ...


@runtime_checkable
class StartsFromPretrained(Protocol):
    """spec.init_from: the pretrained model `ref` (a resolved directory or hub id) on `device`, to continue
    training; `dropout`, when given, replaces the model's own rates."""

    def start_from(self, ref: str, device: str, trust_remote_code: bool = False, dropout: float | None = None) -> "torch.nn.Module": ...


@runtime_checkable
class SamplesFromPrompts(Protocol):
    """spec.prompted: images in [-1, 1] for text prompts from initial latents `noise` (classifier-free
    guidance by gen_cfg.guidance_scale, away from `negative_prompt`); `tokenize` gives the token ids
    its loss takes; `as_data_channels` turns its images into the prepared data's channels."""

    def sample_prompts(self, model: "torch.nn.Module", noise: "torch.Tensor", prompts: list[str], gen_cfg: Any,
                       generators: list["torch.Generator"], negative_prompt: str | None = None) -> "torch.Tensor": ...

    def tokenize(self, model: "torch.nn.Module", texts: list[str]) -> "torch.Tensor": ...

    def as_data_channels(self, model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor": ...


def protocols(entry: BackendSpec) -> list[type]:
    """The Protocols a module with this spec implements: its modality's and one per declared ability."""
    declared = [(entry.ema, UpdatesAfterStep), (entry.reconstructs, Reconstructs), (entry.padded_decoding, DecodesPadded),
                (entry.init_from, StartsFromPretrained), (entry.prompted, SamplesFromPrompts)]
    own = {"text": TextBackend, "image": ImageBackend, "labels": LabelBackend}[entry.modality]
    return [own] + [p for wanted, p in declared if wanted]


# ----------------------------------------------------------------------------- lookups
def spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise AigcError(f"unknown model.backend '{name}'", f"available: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def get_backend(name: str) -> TextBackend | ImageBackend:
    return importlib.import_module(spec(name).module)  # type: ignore[return-value]


# Files by which a directory is known as a checkpoint: aigc's own record, or another tool's marker.
CHECKPOINT_MARKERS = ("aigc.json", *dict.fromkeys(e.files.marker for e in BACKENDS.values() if e.files.marker))


def backend_of_checkpoint(directory: str | Path) -> str:
    """The backend that wrote a checkpoint; a directory from another tool goes by its marker file."""
    directory = Path(directory)
    record = directory / "aigc.json"
    if record.is_file():
        try:
            name = json.loads(record.read_text(encoding="utf-8"))["backend"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            name = None
        if name not in BACKENDS:  # truncated, hand-edited or foreign: no checksums.json may have caught it
            raise AigcError(f"{record} is damaged (it does not name a known backend)",
                            "use another checkpoint of the run, or copy this one again from where it was written")
        return name
    found = [name for name, entry in BACKENDS.items() if entry.files.marker and (directory / entry.files.marker).is_file()]
    if found:
        # config.json is in every transformers model directory (and many others): the most general marker, so the last resort.
        return min(found, key=lambda name: BACKENDS[name].files.marker == "config.json")
    raise AigcError(f"{directory} is not a checkpoint directory (no aigc.json or config.json)",
                    "pass a directory from <run_dir>/checkpoints/ or a Hugging Face model directory")
