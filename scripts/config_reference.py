"""Print the README's "Config reference" from the schema, or rewrite it in place with --write.

The schema (aigc_cli/config.py, and the model sections in the backend registry) is the one place defaults live; tests/docs/test_readme.py fails when
the README's copy drifts from it.
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from aigc_cli import config as schema
from aigc_cli.backends import BACKENDS

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
SECTIONS = [("data", schema.DataConfig), ("data.cleaning", schema.CleaningConfig), ("data.tokenizer", schema.TokenizerConfig),
            ("data.image", schema.ImageDataConfig),
            *((f"model (backend: {name})", entry.config) for name, entry in BACKENDS.items() if entry.config),
            ("train", schema.TrainConfig), ("finetune", schema.FinetuneConfig), ("finetune.lora", schema.LoraConfig), ("finetune.columns", schema.ChatColumnsConfig),
            ("finetune.preference", schema.PreferenceConfig), ("finetune.text_to_image", schema.TextToImageFinetuneConfig),
            ("finetune.text_to_image.dreambooth", schema.DreamBoothConfig),
            ("generate", schema.GenerateConfig), ("generate.few_shot", schema.FewShotConfig),
            ("generate.images", schema.ImageGenerateConfig), ("eval", schema.EvalConfig)]


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " or null"
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def reference() -> str:
    out = []
    for title, model in SECTIONS:
        out += [f"#### `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                continue
            if field.is_required():
                default = "**required**"
            else:
                value = field.get_default(call_default_factory=True)
                default = f"`{value!r}`" if value is not None else "null"
            out.append(f"| `{name}` | {_type_name(field.annotation)} | {default} | {field.description or ''} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def readme_with_reference(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{reference()}{END}{tail}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(readme_with_reference(README.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(reference())
