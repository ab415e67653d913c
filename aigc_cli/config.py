"""The experiment schema: one YAML file, dotted overrides merged in, validated before anything heavy.

Every default lives in these sections, in one place (the `model:` sections beside their families'
entries in the backend registry); the README's config reference is generated from them. This module must never import torch, transformers or diffusers: config errors and
`--help` have to be instant.
"""

from __future__ import annotations

import difflib
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

# The model sections are declared beside their registry entries; these names stay importable from
# here for the code that always imported them (a new family's need not be).
from aigc_cli.backends import BACKENDS, DDPMModelConfig, GANModelConfig, GPTModelConfig, RNNModelConfig, VAEModelConfig  # noqa: F401
from aigc_cli.config_section import Section
from aigc_cli.data.chat import CHAT_TEMPLATES
from aigc_cli.errors import AigcError


SEED_MAX = 2**63 - 1  # the largest seed torch's generators take
MAX_NEW_TOKENS = 1_000_000  # generate.max_new_tokens: a stated bound (each row draws its random numbers up front)


# ----------------------------------------------------------------------------- data
class CleaningConfig(Section):
    unicode: Literal["none", "NFC", "NFKC"] = Field("NFC", description="Unicode normalisation form applied to every line.")
    whitespace: bool = Field(False, description="Collapse runs of spaces/tabs to one space and strip line ends.")
    strip_html: bool = Field(False, description="Remove HTML tags and unescape entities (&amp; → &).")
    dedupe_lines: bool = Field(False, description="Drop exact-duplicate lines (keeps 8 bytes per distinct line in memory).")


class TokenizerConfig(Section):
    kind: Literal["char", "bpe", "pretrained"] = Field("char", description="char: one token per character (byte fallback for unseen ones); bpe: byte-level BPE trained on the corpus; pretrained: an existing model's tokenizer (data.tokenizer.path, default model.init_from), for continued pretraining.")
    vocab_size: int = Field(8000, ge=1, description="Vocabulary size for `bpe` (at least 257: 256 bytes + end-of-text).")
    path: Optional[str] = Field(None, description="For `pretrained`: where the tokenizer comes from — a Hugging Face model directory, a checkpoint, run or prepared-data directory, or a hub id when online (default: model.init_from). Its files are copied into data.prepared_dir, so train, generate and eval use it.")
    max_train_bytes: int = Field(16_000_000, ge=1, description="Train the BPE merges on at most this many bytes of the corpus (the whole corpus is still encoded). BPE training holds about 10-12x this in memory (16 MB: ~320 MB peak).")


class ImageDataConfig(Section):
    size: int = Field(32, ge=4, le=1024, description="Images are resized (shorter side) and centre-cropped to size × size pixels.")
    channels: Literal[1, 3] = Field(1, description="1: greyscale, 3: RGB.")
    class_folders: bool = Field(False, description="Folder sources: the first sub-folder under data.source names each image's class (labels for class-conditioning and the eval classifier).")
    captions: bool = Field(False, description="Text-to-image: keep a caption per image — from metadata.jsonl (file_name, text; diffusers' imagefolder) or a .txt file beside the image (kohya); images without a usable caption are skipped and counted. With data.source=digits the captions are generated: the digit and what is visible ('a bold seven, inverted').")
    crop: Literal["center", "random"] = Field("center", description="Crop of the resized image to a square at prep time: centre, or a random offset drawn with data.seed.")
    caption_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Text-to-image training: share of training captions replaced by the empty prompt (what classifier-free guidance needs).")
    random_flip: bool = Field(False, description="Text-to-image training: flip each training image left-right with probability 1/2 (off for digits, whose captions name a handedness-sensitive shape).")


class DataConfig(Section):
    source: str = Field(..., min_length=1, pattern=r"\S", description="Text backends: a .txt file, a directory of .txt files, a .jsonl file, or `builtin:python-docs` (text shipped with Python itself). Image backends: a folder of PNG/JPEG files (recursive) or `digits` (scikit-learn's 1,797 labelled 8×8 digits).")
    format: Literal["auto", "text", "jsonl"] = Field("auto", description="auto: by file extension (.jsonl/.json → jsonl).")
    jsonl_field: str = Field("text", description="For JSONL sources: the field that holds the text (classifier: the text column of the CSV/JSONL/Parquet records).")
    tokens_field: str = Field("tokens", description="tagger, records: the field holding a sentence's words (a list).")
    tags_field: str = Field("tags", description="tagger, records: the field holding their tags (a list as long as the words).")
    label_field: str = Field("label", description="classifier: the column holding each record's label (a name, an id 0..K-1, a list of names for multi_label, a number for regression).")
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    image: ImageDataConfig = Field(default_factory=ImageDataConfig)
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of the text held out for validation.")
    split: Literal["random", "tail"] = Field("random", description="random: documents (or 64-line chunks) go to val at random with `seed`; tail: the last `val_fraction` of the text (nanoGPT's split).")
    seed: int = Field(1337, ge=0, le=SEED_MAX, description="Seed of the train/val split.")
    prepared_dir: str = Field("prepared/default", description="Where `aigc prep` writes the tokenizer and token arrays, and where `train`/`eval` read them.")


# ----------------------------------------------------------------------------- model
# The `model:` section is one family's, chosen by model.backend; the families are the registry's.
ModelConfig = Annotated[Union[tuple(e.config for e in BACKENDS.values() if e.config)], Field(discriminator="backend")]
IMAGE_BACKENDS = tuple(name for name, e in BACKENDS.items() if e.modality == "image")
LABEL_BACKENDS = tuple(name for name, e in BACKENDS.items() if e.modality == "labels")
_FSDP_BACKENDS = ", ".join(name for name, e in BACKENDS.items() if e.fsdp)

# Text metrics scored against references, and those that need only the predictions.
REFERENCE_METRICS = ("bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "rougeLsum", "cider",
                     "accuracy", "precision", "recall", "f1")
PREDICTION_METRICS = ("distinct1", "distinct2", "self_bleu", "repetition", "length", "prediction_perplexity")
TEXT_METRICS = REFERENCE_METRICS + PREDICTION_METRICS
IMAGE_METRICS = ("fid", "kid", "coverage", "psnr", "ssim", "adherence")
MODEL_METRICS = ("loss", "perplexity")  # a checkpoint on the prepared split (either name: loss, perplexity, bits per token)
PROMPTED_IMAGE_METRICS = ("clip_score",)  # images of `aigc generate --prompt` against their prompts, whatever model.backend says
METRIC_NAMES = MODEL_METRICS + TEXT_METRICS + IMAGE_METRICS + PROMPTED_IMAGE_METRICS


# ----------------------------------------------------------------------------- train
class TrainConfig(Section):
    out_dir: str = Field("runs/default", description="Run directory: resolved config, metrics.jsonl, checkpoints/.")
    seed: int = Field(1337, ge=0, le=SEED_MAX, description="Seeds initialisation, batch order and dropout.")
    max_steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(12, ge=1, description="Sequences per micro-batch, over all processes together: under torchrun each of N processes takes batch_size/N of them (it must divide).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-3, gt=0.0, description="Peak AdamW learning rate.")
    min_lr: float = Field(1e-4, ge=0.0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up from 0 to learning_rate.")
    lr_decay_steps: Optional[int] = Field(None, ge=1, description="Step at which the cosine decay reaches min_lr (default max_steps).")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW decoupled weight decay, on weight matrices only.")
    beta1: float = Field(0.9, gt=0.0, lt=1.0, description="AdamW beta1.")
    beta2: float = Field(0.99, gt=0.0, lt=1.0, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0.0, description="Max gradient norm; 0 disables clipping.")
    eval_every: int = Field(250, ge=1, description="Steps between validation-loss estimates.")
    eval_batches: int = Field(200, ge=1, description="Random validation batches per estimate.")
    save_every: int = Field(1000, ge=0, description="Steps between checkpoints (0: only the final one). `--resume` continues from the newest intact one; SIGINT/SIGTERM also save one.")
    keep_last: int = Field(3, ge=0, description="Keep only the newest N checkpoints (0: keep all); older ones are deleted after a new one is complete.")
    skip_nonfinite: bool = Field(False, description="On a NaN/inf loss or gradient, skip that batch's update and count it (metrics.jsonl: skipped_nonfinite) instead of stopping with exit code 4.")
    log_every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines.")
    sample_every_eval: bool = Field(True, description="At each evaluation write samples, from fixed seeds, to <out_dir>/train_samples/step-NNNNNN.txt (text) or .png (an image grid) and to TensorBoard, to watch progress while training.")
    sample_prompts: list[str] = Field(default_factory=lambda: ["", "The "], description="Text: the prompts of those samples, one completion each with the generate.* sampling settings ('' starts from end-of-text).")
    sample_tokens: int = Field(64, ge=1, description="Text: new tokens per sample.")
    sample_images: int = Field(16, ge=1, description="Images: images in each sample grid.")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA when present, then Apple's mps, else CPU; an explicit cuda or mps that is not there is an error.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 autocast or fp32; auto: bf16 on CUDA GPUs that support it and, for gpt, finetune, ddpm and gan, on CPUs with native bf16 (AVX512-BF16 or AMX), where it measured faster at the same loss (README: Training); fp32 otherwise (rnn, vae).")
    strategy: Literal["auto", "ddp", "fsdp"] = Field("auto", description="Under torchrun (WORLD_SIZE > 1): ddp replicates the model on every process (DistributedDataParallel); fsdp shards parameters, gradients and optimizer state (FSDP2 fully_shard; gpt, rnn, vae, lora). auto: ddp. Ignored in a single process.")
    compile: bool = Field(False, description="torch.compile the training step (the model and its loss); the first steps are slower while it compiles.")


# ----------------------------------------------------------------------------- finetune
class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0.0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Optional[list[str]] = Field(None, description="Module names to adapt (null: every attention and MLP projection of the architecture, e.g. c_attn/c_proj/c_fc for GPT-2, q/k/v/o/gate/up/down_proj for Llama). A dotted suffix picks one kind, e.g. mlp.c_proj.")
    modules_to_save: Optional[list[str]] = Field(None, description="Modules trained in full beside the adapters and saved with them (peft's modules_to_save), e.g. h.3.attn.c_proj: a full-rank matrix where a low-rank update is too narrow.")
    rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha/sqrt(r) instead of alpha/r.")
    loraplus_lr_ratio: Optional[float] = Field(None, gt=0.0, description="LoRA+ (Hayou et al. 2024): the B matrices learn this many times faster than train.learning_rate (the paper suggests 16); null: one rate for all.")
    dora: bool = Field(False, description="DoRA (peft's use_dora): learn each weight column's magnitude apart from its LoRA-updated direction; closer to full fine-tuning at low rank, slower per step.")


# Preference tuning (finetune.method dpo|orpo|simpo): each key names the methods it applies to, and
# the names of TRL's arguments that mean the same, so a TRL config translates key by key.
PREFERENCE_METHODS = ("dpo", "orpo", "simpo")
PREFERENCE_DEFAULT_BETA = {"dpo": 0.1, "simpo": 2.0}  # TRL DPOConfig.beta; the SimPO paper's β (TRL CPOConfig's 0.1 is CPO's)


class PreferenceConfig(Section):
    weights: Literal["lora", "full"] = Field("lora", description="Which weights dpo/orpo/simpo train: lora: adapters (finetune.lora), and DPO's reference is the base with the adapters disabled (no second copy in memory); full: every weight (minus finetune.freeze_layers), and DPO keeps a frozen copy of the base as its reference.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="dpo only (TRL DPOConfig.loss_type): sigmoid: -log σ(β·Δ), the DPO paper's loss; ipo: (Δ' - 1/(2β))², Δ' the log-ratio difference per reply token, as TRL computes IPO; hinge: max(0, 1 - β·Δ). Δ = (chosen - rejected) policy log-prob minus the same for the reference.")
    beta: Optional[float] = Field(None, gt=0.0, description="dpo: β, the weight of staying close to the reference (TRL DPOConfig.beta; for ipo it is τ); default 0.1. simpo: β, the scale of the length-averaged reward (TRL CPOConfig.beta); default 2.0, the SimPO paper's. orpo has no β: see orpo_lambda.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="dpo with loss_type sigmoid: ε, the share of pairs assumed to be labelled the wrong way round; > 0 is robust DPO (Chowdhury et al. 2024), TRL's loss_type 'robust' with label_smoothing ε. 0: plain DPO.")
    simpo_gamma: float = Field(0.5, ge=0.0, description="simpo only: γ, the target reward margin: the loss is -log σ(β·(mean log-prob of chosen - of rejected) - γ) (TRL CPOConfig.simpo_gamma, same default).")
    orpo_lambda: float = Field(0.1, gt=0.0, description="orpo only: λ, the weight of the odds-ratio term beside the NLL of the chosen reply (TRL calls it ORPOConfig.beta; same default).")
    reference: Literal["model"] = Field("model", description="dpo: where the reference log-probs come from. model: computed each step without gradients, from the base with the adapters disabled (weights: lora) or the frozen copy (weights: full). orpo and simpo use no reference.")
    disable_dropout: bool = Field(True, description="Turn dropout off in the forward passes of preference tuning (TRL's disable_dropout, same default): the log-probs then depend on the weights alone, and DPO's rewards start at exactly 0.")

    def beta_for(self, method: str) -> float:
        """β of dpo or simpo: the one set, or the method's default."""
        return self.beta if self.beta is not None else PREFERENCE_DEFAULT_BETA[method]


class ChatColumnsConfig(Section):
    messages: Optional[str] = Field(None, description="messages/sharegpt: the field holding the list of turns (null: 'messages' for messages, 'conversations' for sharegpt).")
    role: Optional[str] = Field(None, description="messages/sharegpt: a turn's key for its speaker (null: 'role' for messages, 'from' for sharegpt).")
    content: Optional[str] = Field(None, description="messages/sharegpt: a turn's key for its text (null: 'content' for messages, 'value' for sharegpt).")
    system: str = Field("system", description="alpaca/sharegpt/messages: an optional field with the system prompt (messages: used when the turns hold no system message).")
    instruction: str = Field("instruction", description="alpaca: the instruction field.")
    input: str = Field("input", description="alpaca: the optional input field, appended to the instruction after a blank line.")
    output: str = Field("output", description="alpaca: the response field.")
    prompt: str = Field("prompt", description="preference: the prompt (a string or a list of messages; leave it out when chosen and rejected are whole conversations sharing it).")
    chosen: str = Field("chosen", description="preference: the preferred reply (a string or a list of messages).")
    rejected: str = Field("rejected", description="preference: the dispreferred reply (a string or a list of messages).")


class DreamBoothConfig(Section):
    instance_prompt: Optional[str] = Field(None, description="DreamBooth (diffusers' train_dreambooth.py): the prompt of every instance image, e.g. 'a photo of sks digit'. Set, finetune trains on instance_dir's images with this one caption (no `aigc prep` data needed).")
    instance_dir: Optional[str] = Field(None, description="The folder of instance images (PNG/JPEG, recursive), resized and centre-cropped to data.image.size.")
    class_prompt: Optional[str] = Field(None, description="Prior preservation: the prompt of the class images, e.g. 'a photo of a digit'. Set, each batch is half instance, half class images.")
    class_dir: Optional[str] = Field(None, description="Class images (default <train.out_dir>/class_images). When it holds fewer than num_class_images, the base pipeline generates the rest into it (seeded, as train_dreambooth.py does).")
    num_class_images: int = Field(100, ge=1, description="Class images prior preservation wants; missing ones are generated by the base pipeline.")
    prior_loss_weight: float = Field(1.0, ge=0.0, description="Weight of the class images' loss: loss = instance MSE + prior_loss_weight × class MSE.")

    @model_validator(mode="after")
    def _complete(self):
        if self.instance_prompt is None and (self.instance_dir or self.class_prompt or self.class_dir):
            raise ValueError("finetune.text_to_image.dreambooth: set instance_prompt (DreamBooth trains on instance_dir with it)")
        for key in ("instance_prompt", "class_prompt"):
            if getattr(self, key) is not None and not getattr(self, key).strip():
                raise ValueError(f"finetune.text_to_image.dreambooth.{key} is empty: give the prompt the images are trained with (e.g. 'a photo of sks dog')")
        if self.instance_prompt is not None and not self.instance_dir:
            raise ValueError("finetune.text_to_image.dreambooth.instance_prompt needs instance_dir, the folder of instance images")
        if self.class_dir and not self.class_prompt:
            raise ValueError("finetune.text_to_image.dreambooth.class_dir needs class_prompt (prior preservation)")
        return self


class TextToImageFinetuneConfig(Section):
    train_text_encoder: bool = Field(False, description="Also train the CLIP text encoder: LoRA adapters on its q_proj/k_proj/v_proj/out_proj (finetune.lora's rank, alpha and dropout; saved in the same pytorch_lora_weights.safetensors with the text_encoder prefix, so load_lora_weights loads both), or in full with method full.")
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description="Exponential moving average of the trained weights (diffusers' EMAModel: decay min(this, (1+k)/(10+k)) after update k, none at the first). 0: off. On, the checkpoint's sampling weights (pytorch_lora_weights.safetensors, or the pipeline's unet/ and text_encoder/) are the EMA; the raw training weights sit beside them for --resume.")
    snr_gamma: Optional[float] = Field(None, gt=0.0, description="Min-SNR loss weighting (Hang et al. 2023; diffusers' train_text_to_image.py --snr_gamma): each example's MSE weighted by min(SNR(t), gamma)/SNR(t) (epsilon) or /(SNR(t)+1) (v_prediction). 5.0 is the paper's. null: plain MSE.")
    dreambooth: DreamBoothConfig = Field(default_factory=DreamBoothConfig)


class FinetuneConfig(Section):
    base: Optional[str] = Field(None, description="Base model: a local Hugging Face causal-LM directory (e.g. a checkpoint of `aigc train`) or a hub id when online. Required by `aigc finetune`.")
    method: Literal["full", "lora", "dpo", "orpo", "simpo"] = Field("lora", description="full: update every weight (minus frozen layers); lora: train low-rank adapters with peft. Preference tuning on prompt/chosen/rejected records (finetune.preference): dpo (against a reference model), orpo (NLL of chosen + odds ratio), simpo (length-averaged reward with a margin); the last two need no reference.")
    trust_remote_code: bool = Field(False, description="Allow a hub model's own Python code to run. Off unless you trust the source.")
    freeze_layers: int = Field(0, ge=0, description="full only: freeze the bottom N transformer blocks.")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    text_to_image: TextToImageFinetuneConfig = Field(default_factory=TextToImageFinetuneConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    quantization: Literal["none", "4bit", "8bit"] = Field("none", description="QLoRA: load the frozen base quantized by bitsandbytes (CUDA or CPU) and train LoRA adapters on it. 4bit: NF4 with double quantization, computing in bf16 where train.precision picks it, else fp32; 8bit: LLM.int8. Needs LoRA adapters. Checkpoints stay plain peft adapters; `aigc generate`/`eval` and --merge use the full-precision base.")
    train_file: Optional[str] = Field(None, description="Training records: JSONL, JSON, CSV, TSV, Parquet or Arrow (.gz allowed for the text ones), or a `datasets.save_to_disk` directory; fields as finetune.format and finetune.columns say.")
    source_file: Optional[str] = Field(None, description="Or: a text file of sources, one per line (.gz allowed)...")
    target_file: Optional[str] = Field(None, description="...with the line-aligned responses (.gz allowed).")
    val_file: Optional[str] = Field(None, description="Validation records, in the same format as train_file (default: val_fraction of the training records).")
    val_source_file: Optional[str] = Field(None, description="Or validation sources, one per line.")
    val_target_file: Optional[str] = Field(None, description="...and their line-aligned responses.")
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5, description="Share of training pairs held out when no validation files are given.")
    format: Literal["auto", "pairs", "alpaca", "sharegpt", "messages", "preference"] = Field("auto", description="pairs: prompt_field/response_field filled into `template`; alpaca: instruction/input/output; sharegpt: `conversations` of from/value; messages: OpenAI-style role/content turns; preference: prompt + chosen/rejected. auto: told from the first record (and stated on stderr). All but pairs go through the chat template.")
    columns: ChatColumnsConfig = Field(default_factory=ChatColumnsConfig)
    chat_template: Literal[tuple(CHAT_TEMPLATES)] = Field("chatml", description="The chat template for a base whose tokenizer has none (aigc's models): chatml (<|im_start|>/<|im_end|>), llama3 (header tokens, <|eot_id|>) or zephyr (<|user|> tags, end-of-text). Its tokens are added to the tokenizer and it is written into the checkpoint's tokenizer_config.json. A base with its own template keeps it.")
    train_on: Literal["assistant", "last_assistant", "all"] = Field("assistant", description="Chat formats: the tokens the loss covers: every assistant turn (with its end-of-turn token), the last assistant turn only, or every token of the conversation.")
    prompt_field: str = Field("source", description="pairs: JSONL field with the input ({source} in the template for line files).")
    response_field: str = Field("target", description="pairs: field with the response; the loss is computed on it (and end-of-text) only.")
    template: str = Field("{source}\n", description="pairs: prompt template filled with the record's fields, e.g. 'German: {source}\\nEnglish: '.")
    max_length: Optional[int] = Field(None, ge=8, description="Truncate each example to this many tokens, cutting from the end; an example with no trained token left is dropped and counted (default: the base model's context).")
    packing: bool = Field(False, description="Pack whole examples into rows of up to max_length tokens (fewer pad tokens). Each example keeps its own positions from 0 and attends only to itself (padding-free batches, see README: chat fine-tuning).")
    seed: int = Field(1337, ge=0, le=SEED_MAX, description="Seed of the validation hold-out.")

    @model_validator(mode="after")
    def _preference_settings_apply(self):
        """A preference setting the chosen method would silently ignore is an error, naming where it applies."""
        if self.method not in PREFERENCE_METHODS:
            return self
        pc, method = self.preference, self.method
        if method == "orpo" and pc.beta is not None:
            raise ValueError("finetune.preference.beta does not apply to method orpo: ORPO's weight is finetune.preference.orpo_lambda "
                             "(what TRL's ORPOConfig calls beta)")
        applies = {"loss_type": ("method dpo", method == "dpo"),
                   "label_smoothing": ("method dpo with loss_type sigmoid", method == "dpo" and pc.loss_type == "sigmoid"),
                   "simpo_gamma": ("method simpo", method == "simpo"), "orpo_lambda": ("method orpo", method == "orpo")}
        for key, (where, here) in applies.items():
            if getattr(pc, key) != PreferenceConfig.model_fields[key].default and not here:
                this = f"method {method}" + (f" with loss_type {pc.loss_type}" if key == "label_smoothing" and method == "dpo" else "")
                raise ValueError(f"finetune.preference.{key} applies to {where} only, not to {this}: remove it or change the method")
        for key in ("source_file", "target_file", "val_source_file", "val_target_file"):
            if getattr(self, key):
                raise ValueError(f"finetune.{key} holds prompt/response lines; method {method} needs preference records "
                                 "(prompt, chosen, rejected) in finetune.train_file")
        return self

    @model_validator(mode="after")
    def _quantization_needs_adapters(self):
        if self.quantization != "none" and not trains_adapters(self):
            raise ValueError(f"quantization={self.quantization} needs LoRA adapters (method=lora, or preference.weights=lora under dpo/orpo/simpo), not method={self.method}{' with preference.weights=full' if self.method in PREFERENCE_METHODS else ''}: a quantized base cannot be trained in full")
        return self


def trains_adapters(fc: FinetuneConfig) -> bool:
    """Whether finetune trains LoRA adapters on a frozen base (what quantization needs)."""
    return fc.method == "lora" or (fc.method in PREFERENCE_METHODS and fc.preference.weights == "lora")


# ----------------------------------------------------------------------------- generate / eval
class FewShotConfig(Section):
    k: int = Field(0, ge=0, description="Examples put before each input (0: off).")
    examples_file: Optional[str] = Field(None, description="JSONL examples (fields as in the template plus response_field).")
    source_file: Optional[str] = Field(None, description="Or line-aligned source/target text files (.gz allowed).")
    target_file: Optional[str] = None
    response_field: str = Field("target", description="Field holding an example's answer.")
    separator: str = Field("\n", description="Text between examples.")
    seed: int = Field(1337, ge=0, le=SEED_MAX, description="Seed for drawing the examples (per input).")


class ImageGenerateConfig(Section):
    num_images: int = Field(64, ge=1, description="Images to sample (`--num`).")
    sampler: Literal["ddim", "ddpm", "dpm-solver++", "euler"] = Field("ddim", description="Diffusion models: the diffusers scheduler used for sampling (dpm-solver++ and euler: text-to-image pipelines only).")
    guidance_scale: float = Field(7.5, ge=0.0, description="Text-to-image: classifier-free guidance scale (1 or less: no guidance, the prompt alone).")
    negative_prompt: Optional[str] = Field(None, description="Text-to-image: what guidance steers away from (default: the empty prompt).")
    num_inference_steps: int = Field(50, ge=1, description="ddpm backend: denoising steps (DDPM sampling uses all training steps when this is larger).")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta (0: deterministic DDIM, 1: DDPM-like noise).")
    class_labels: Optional[list[int]] = Field(None, description="Class-conditional models: the classes to sample, cycled over the images (default: every class in turn).")
    reconstruct: Optional[str] = Field(None, description="vae backend: also reconstruct these images (a folder or a single file), or `val` for the prepared validation split.")
    grid_columns: Optional[int] = Field(None, ge=1, description="Columns of grid.png (default: about the square root of the count).")
    batch_size: int = Field(256, ge=1, description="Images sampled per forward pass.")


class GenerateConfig(Section):
    prompts: list[str] = Field(default_factory=lambda: [""], description="Prompts used when none are given on the command line ('' starts from end-of-text).")
    max_new_tokens: int = Field(200, ge=1, le=MAX_NEW_TOKENS, description="Stop after this many new tokens (or at end-of-text); at most 1,000,000.")
    temperature: float = Field(0.8, ge=0.0, description="0 means greedy decoding.")
    top_k: Optional[int] = Field(200, ge=1, description="Keep the k most likely tokens (null: off).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1.0: off).")
    repetition_penalty: float = Field(1.0, gt=0.0, description="CTRL-style penalty on tokens already present (1.0: off).")
    num_samples: int = Field(1, ge=1, description="Completions per prompt.")
    seed: int = Field(1337, ge=0, le=SEED_MAX, description="Same seed, same text.")
    template: Optional[str] = Field(None, description="Fill each prompt into this template ({source} is the prompt line; JSONL prompts fill fields by name), e.g. the fine-tuning template.")
    few_shot: FewShotConfig = Field(default_factory=FewShotConfig)
    stop: list[str] = Field(default_factory=list, description="Cut the completion at the first of these strings and stop.")
    rstrip_prompt: bool = Field(False, description="Strip trailing spaces from the final prompt: a base model rarely saw a word-less space token, so 'English: ' invites a newline (the completion then starts with the space). Leave off for models fine-tuned on the template.")
    out: Optional[str] = Field(None, description="JSONL output file for text (default <train.out_dir>/generations.jsonl); the output folder for images (default <train.out_dir>/samples).")
    batch_size: int = Field(16, ge=1, description="Text: prompts sampled together (left-padded, one key/value cache); 1 samples one at a time. The rnn backend and --stream always go one at a time.")
    images: ImageGenerateConfig = Field(default_factory=ImageGenerateConfig)


class EvalConfig(Section):
    split: Literal["val", "train"] = Field("val", description="Prepared split to score.")
    batch_size: int = Field(16, ge=1, description="Windows scored per forward pass.")
    max_batches: Optional[int] = Field(None, ge=1, description="Score at most this many batches of block_size windows (null: the whole split).")
    metrics: list[Literal[METRIC_NAMES]] = Field(default_factory=lambda: ["loss"], description="loss (or perplexity): loss, perplexity and bits per token of a checkpoint on a prepared split. Against references: bleu, chrf, ter (sacrebleu), rouge1/rouge2/rougeL/rougeLsum (rouge-score), cider (CIDEr-D), accuracy/precision/recall/f1 (labels). Predictions alone: distinct1, distinct2, self_bleu, repetition, length, prediction_perplexity (the predictions' perplexity under --checkpoint: a fluency score). Images: fid/kid (generated vs held-out real), coverage (class shares of the samples by the eval classifier), psnr/ssim (vae reconstructions of the held-out images), adherence (text-to-image: the share of samples for the held-out captions whose digit, read by a classifier fitted on scikit-learn's digits, is the one the caption names; also adherence_inverted and adherence_weight for ', inverted' and thin/bold). Text-to-image: clip_score (torchmetrics CLIPScore of eval.generations' images against their prompts; needs eval.clip_model, else skipped and said so).")
    generations: Optional[str] = Field(None, description="For text metrics (`--predictions`): the JSONL written by `aigc generate`, any JSONL (predictions_field), or a text file with one item per line (.gz allowed). For fid/kid/coverage: a folder of generated images (default: sample eval.num_samples from the checkpoint).")
    references: Union[str, list[str], None] = Field(None, description="For text metrics: line-aligned reference texts (.gz allowed) or JSONL (field references_field: a string or a list of strings); a list of files gives several references per item.")
    predictions_field: str = Field("completion", description="JSONL predictions: the field holding the text (rows with `sample` > 0 are skipped, so `aigc generate` output scores its first sample).")
    references_field: str = Field("reference", description="JSONL references: the field holding the reference (a string, or a list of strings for several).")
    lang: Optional[str] = Field(None, description="Language of the texts (e.g. en, de, zh, ja, ko). zh: sacrebleu's zh tokenizer for BLEU and character-level TER; ja/ko: MeCab tokenizers (pip install 'sacrebleu[ja]' / 'sacrebleu[ko]').")
    bleu_tokenize: Optional[Literal["none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab", "flores101", "flores200"]] = Field(None, description="Override sacrebleu's BLEU tokenizer (default: from lang, else 13a).")
    rouge_stemmer: bool = Field(False, description="Porter-stem English words before ROUGE (rouge-score's use_stemmer).")
    self_bleu_sample: int = Field(1000, ge=2, description="self_bleu scores a seeded random sample of this many predictions, each against the others.")
    fail_under: dict[str, float] = Field(default_factory=dict, description="Quality gate: exit 1 when a metric is below its bound, e.g. {bleu: 25, rougeL: 0.3}.")
    fail_above: dict[str, float] = Field(default_factory=dict, description="Quality gate for lower-is-better metrics (ter, perplexity, fid, ...): exit 1 when above the bound.")
    baseline: Optional[str] = Field(None, description="A previous report.json to compare with (see max_drop).")
    max_drop: dict[str, float] = Field(default_factory=dict, description="Exit 1 when a metric got worse than in `baseline` by more than this (a drop, or a rise for lower-is-better metrics).")
    num_samples: int = Field(500, ge=2, description="Images: how many to sample from the checkpoint for fid/kid/coverage (when eval.generations is not given).")
    image_features: Literal["auto", "classifier", "inception"] = Field("auto", description="Feature space of FID/KID: inception (needs inception_weights and torch-fidelity) or a small CNN classifier aigc trains on the labelled prepared data; auto: inception when inception_weights is set.")
    inception_weights: Optional[str] = Field(None, description="Local path of torch-fidelity's Inception-v3 FID weights (pt_inception-2015-12-05-6726825d.pth); nothing is downloaded.")
    clip_model: Optional[str] = Field(None, description="clip_score: a local CLIP model directory (CLIPModel.save_pretrained with its CLIPProcessor files, e.g. a copy of openai/clip-vit-base-patch16); nothing is downloaded. Unset: clip_score is skipped and the report says so.")
    out: Optional[str] = Field(None, description="JSON report path (default <train.out_dir>/eval/report.json; without a config: next to the predictions, NAME.eval.json); the Markdown table goes beside it (.md).")


class ExperimentConfig(Section):
    data: Optional[DataConfig] = Field(None, description="Needed by prep, train and eval's loss; a fine-tuning experiment may leave it out.")
    model: ModelConfig = Field(default_factory=GPTModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _modality_matches(self):
        image = self.model.backend in IMAGE_BACKENDS
        wrong = [m for m in self.eval.metrics if m in (TEXT_METRICS if image else IMAGE_METRICS)]
        if wrong:
            kind = "images" if image else "text"
            raise ValueError(f"eval.metrics {wrong} do not apply to model.backend={self.model.backend}, which makes {kind}")
        if BACKENDS[self.model.backend].prompted and self.data is not None:  # latent-diffusion: trained on captioned images
            if not self.data.image.captions:
                raise ValueError(f"model.backend={self.model.backend} learns from captions: set data.image.captions=true (and run `aigc prep CONFIG --force`)")
            if self.data.image.size % self.model.downsampling():
                raise ValueError(f"data.image.size={self.data.image.size} must divide by {self.model.downsampling()} for model.autoencoder_channels and model.unet_channels "
                                 "(each level after the first halves the resolution)")
        if self.data is not None and self.data.source == "digits" and not image and not self.data.image.captions:
            raise ValueError(f"data.source 'digits' is an image set; model.backend={self.model.backend} is a text model (use {', '.join(IMAGE_BACKENDS[:-1])} or {IMAGE_BACKENDS[-1]})")
        return self


# ----------------------------------------------------------------------------- loading
def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), options: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Read YAML, merge `section.key=value` overrides and then a verb's options into it, validate.
    Raises AigcError."""
    return validate_config(set_options(read_config(path, overrides), options or {}), source=str(Path(path)))


def read_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The YAML file with the overrides merged in, not yet validated."""
    path = Path(path)
    if path.is_dir():
        raise AigcError(f"config {path} is a directory, not a file", "pass the path of a YAML experiment file, e.g. configs/quickstart.yaml")
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "not found"
        raise AigcError(f"config file {what}: {path}", "pass the path of a YAML experiment file, e.g. configs/quickstart.yaml")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader)  # noqa: S506 — a SafeLoader
    except _DuplicateKey as exc:
        raise AigcError(f"{path}: key '{exc.key}' appears twice (line {exc.first} and line {exc.again}); the second would silently replace the first",
                        "keep one of them (merge their keys into one section)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise AigcError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}", "fix the YAML syntax") from None
    except UnicodeDecodeError:
        raise AigcError(f"{path} is not UTF-8 text", "save the config as UTF-8 YAML") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AigcError(f"{path} must hold a mapping of sections (data, model, train, ...), not {type(raw).__name__}", "see configs/ for examples")
    _check_values(raw, str(path))
    for item in overrides:
        apply_override(raw, item)
    return raw


def set_options(raw: dict, options: Mapping[str, Any]) -> dict:
    """A verb's command-line options put into the config at their dotted keys (`--seed 7` is
    generate.seed=7), before validation checks them. Values are typed already (never parsed as YAML,
    so `--lang no` stays the text 'no'); None means the option was not given. A key under a value
    that is not a section is left for validation to report."""
    for key, value in options.items():
        if value is None:
            continue
        *sections, name = key.split(".")
        node = raw
        for part in sections:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                break
        else:
            node[name] = value
    return raw


def backend_name(raw: dict) -> str:
    """The model family an unvalidated config names (gpt when it names none)."""
    model = raw.get("model")
    return str(model.get("backend", "gpt")) if isinstance(model, dict) else "gpt"


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.again = key, first, again


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key given twice in one mapping is an error, not a silent overwrite."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


MAX_CONFIG_VALUES = 100_000  # far beyond any real experiment; a YAML alias bomb expands to billions


def _check_values(raw: Any, source: str) -> None:
    """Walk the loaded YAML once, counting every value as often as aliases repeat it: an alias bomb
    (or a recursive alias) is refused before validation would walk, or an error message print, it
    all. NUL bytes, which no path or text in a config may hold, are refused with their key."""
    budget = [MAX_CONFIG_VALUES]
    stack: list[tuple[Any, str]] = [(raw, "")]
    while stack:
        value, where = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise AigcError(f"{source} expands to more than {MAX_CONFIG_VALUES:,} values (YAML aliases repeating each other?)",
                            "write the config out without nested anchors and aliases")
        if isinstance(value, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
        elif isinstance(value, str) and "\x00" in value:
            raise AigcError(f"{source}: '{where}' holds a NUL byte", "remove it: no path or text may contain NUL")


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise AigcError(f"bad override {item!r}", "write overrides as section.key=value, e.g. train.max_steps=200")
    try:
        parsed = yaml.safe_load(value) if value.strip() else value
    except yaml.YAMLError:
        parsed = value  # not YAML: keep the literal string
    if isinstance(parsed, dict) and not value.lstrip().startswith("{"):
        parsed = value  # "German: {source}" is a template string, not a YAML mapping
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise AigcError(f"override {item!r}: {part} is a value, not a section", "check the key path")
        node = child
    node[parts[-1]] = parsed


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    _check_values(raw, source)  # also what overrides and command-line options put in
    if isinstance(raw.get("model"), dict) and "backend" not in raw["model"]:
        raw = {**raw, "model": {"backend": "gpt", **raw["model"]}}  # the documented default backend
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(err) for err in exc.errors()]
        message = f"{source}: " + ("; ".join(lines) if len(lines) <= 3 else "; ".join(lines[:3]) + f"; and {len(lines) - 3} more")
        raise AigcError(message, "fix the config or override (see README 'Config reference')") from None


def _describe_error(err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    # For discriminated unions pydantic puts the tag (e.g. "gpt") into the path; users never write it.
    key_path, model_cls = _user_path(loc)
    if err["type"] == "extra_forbidden":
        known = list(model_cls.model_fields) if model_cls else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f" — did you mean '{close[0]}'?" if close else (f" (known keys: {', '.join(known)})" if known else "")
        return f"unknown key '{key_path}'{hint}"
    if err["type"] == "missing":
        return f"missing required key '{key_path}'"
    if err["type"] == "union_tag_invalid":
        return f"'{key_path}.backend' must be one of {err['ctx']['expected_tags']} (got {err['input'].get('backend')!r})" if isinstance(err.get("input"), dict) else f"{key_path}: {err['msg']}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {_SHORT_REPR.repr(got)})"  # bounded: the input may be huge
    message = err["msg"].removeprefix("Value error, ")
    return f"'{key_path}': {message}{shown}" if key_path else message


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 80
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 4
_SHORT_REPR.maxlevel = 2


def _user_path(loc: list[str]) -> tuple[str, type[BaseModel] | None]:
    """Map pydantic's error location to the dotted key a user wrote, and the model owning its last key."""
    owner: type[BaseModel] | None = ExperimentConfig
    out: list[str] = []
    i = 0
    while i < len(loc):
        part = loc[i]
        out.append(part)
        i += 1
        if i == len(loc) or owner is None:
            break
        field = owner.model_fields.get(part)
        models = [a for a in _flatten(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)] if field else []
        if len(models) > 1:  # discriminated union: pydantic puts the tag (e.g. "gpt") next in the path
            owner = next((m for m in models if m.model_fields["backend"].default == loc[i]), None)
            i += owner is not None
        else:
            owner = models[0] if models else None
    return ".".join(out), owner


def _flatten(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    if not args:
        return [annotation]
    return [x for a in args for x in _flatten(a)]


def require_data(cfg: ExperimentConfig) -> DataConfig:
    if cfg.data is None:
        raise AigcError("missing required key 'data.source'", "add a data section naming the corpus (see configs/quickstart.yaml)")
    return cfg.data


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML, the form written into every output directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
