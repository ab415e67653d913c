"""The base of every config section, in a module of its own: the backend registry declares each
family's `model:` section and config.py builds the experiment from them, so both import it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Unknown keys are errors (with a did-you-mean), never silently ignored; nan and inf are no
    # number a learning rate, bound or size may be.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, defer_build=True, allow_inf_nan=False)
