"""`--format onnx`: a decoder with the key/value cache, laid out as optimum and transformers.js
lay theirs out, so their runtimes (and plain ONNX Runtime) drive it step by step.

Inputs: input_ids, attention_mask (past + new tokens), position_ids, past_key_values.N.key/value
(batch, kv heads, past length, head dim; past length 0 for the first step). Outputs: logits,
present.N.key/value (the past with the new tokens appended). Written with torch.onnx.export
(the dynamo exporter, onnxscript): optimum's ONNX package pins transformers < 4.58, so it cannot
be installed beside aigc. config.json, generation_config.json and the tokenizer go beside model.onnx.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aigc_cli.errors import AigcError
from aigc_cli.export.standalone import copy_companions, standalone_model

DEFAULT_DTYPE = "fp32"
ARCHITECTURES = ("gpt2", "llama")  # the ones whose export is tested against transformers (tests/export/test_onnx.py)
MODEL_FILE = "model.onnx"


class DecoderWithPast(torch.nn.Module):
    """The model called with flat past tensors and returning flat present tensors: ONNX has no
    Cache objects, so the wrapper builds transformers' DynamicCache from its inputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers
        from aigc_cli.backends.gpt import _cache_keyword

        self.cache_keyword = _cache_keyword(type(model))

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.layers)], config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                         **{self.cache_keyword: cache})
        present = out["cache"] if "cache" in out else out.past_key_values
        return (out.logits, *(t for layer in present.layers for t in (layer.keys, layer.values)))


def io_names(layers: int) -> tuple[list[str], list[str]]:
    pairs = [(i, part) for i in range(layers) for part in ("key", "value")]
    return (["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{i}.{p}" for i, p in pairs)],
            ["logits", *(f"present.{i}.{p}" for i, p in pairs)])


def cache_shape(config) -> tuple[int, int]:
    """(key/value heads, head dim) of one layer's cache."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, head_dim


def export(checkpoint_dir: Path, out_dir: Path, dtype: str | None) -> list[Path]:
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise AigcError(f"--format onnx needs the Python package {' and '.join(missing)}, which torch.onnx's exporter uses",
                        "install aigc's export extra: pip install 'aigc[export]'")
    if dtype == "bf16":
        raise AigcError("--format onnx does not take --dtype bf16: ONNX Runtime's CPU provider cannot run a bfloat16 graph "
                        "(it has no bfloat16 kernels for operations such as Mul)", "use --dtype fp32 (the default) or fp16")
    model = standalone_model(checkpoint_dir, dtype, "onnx")
    if model.config.model_type not in ARCHITECTURES:
        raise AigcError(f"--format onnx is tested for {' and '.join(ARCHITECTURES)} models; {checkpoint_dir} is a "
                        f"'{model.config.model_type}' model", "use --format safetensors for it")
    _write_onnx(model, out_dir / MODEL_FILE)
    model.config.save_pretrained(out_dir)
    written = sorted(p for p in out_dir.iterdir() if p.name.startswith(MODEL_FILE)) + [out_dir / "config.json"]
    return written + copy_companions(checkpoint_dir, out_dir, model)


def _write_onnx(model: torch.nn.Module, path: Path) -> None:
    import contextlib
    import logging
    import sys
    import warnings

    from torch.export import Dim

    kv_heads, head_dim = cache_shape(model.config)
    layers = model.config.num_hidden_layers
    inputs, outputs = io_names(layers)
    vocab = model.config.vocab_size
    # Sample inputs: batch 2, 3 new tokens after 4 past ones (sizes above 1, so none is fixed as a constant).
    batch, new, past_len = 2, 3, 4
    dtype = next(model.parameters()).dtype
    ids = torch.arange(batch * new).reshape(batch, new) % vocab
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    positions = torch.arange(past_len, past_len + new).expand(batch, new)
    past = [torch.zeros(batch, kv_heads, past_len, head_dim, dtype=dtype) for _ in range(2 * layers)]
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not installed": not needed here
    b, s, p = Dim("batch_size"), Dim("sequence_length"), Dim("past_sequence_length")
    shapes = {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: Dim.AUTO}, "position_ids": {0: b, 1: s},
              "past": tuple({0: b, 2: p} for _ in past)}
    # The exporter reports its progress on stdout, where --json prints the one JSON object: to stderr with it.
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # the exporter's notes on renamed axes and deprecations are not the user's concern
        program = torch.onnx.export(DecoderWithPast(model), (ids, mask, positions, *past), dynamo=True, input_names=inputs,
                                    output_names=outputs, dynamic_shapes=shapes, optimize=True, verbose=False)
    program.save(str(path))
