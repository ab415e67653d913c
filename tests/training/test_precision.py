"""aigc_cli/training/precision.py (auto's choices are tested in tests/cli/test_train_generate_eval.py)."""

from __future__ import annotations

import pytest
import torch

from aigc_cli.backends import get_backend
from aigc_cli.errors import AigcError
from aigc_cli.training import precision


def test_bf16_asked_for_without_native_support_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(AigcError, match="no native bfloat16 support"):
        precision.pick_precision("bf16", "cpu", get_backend("gpt"))
