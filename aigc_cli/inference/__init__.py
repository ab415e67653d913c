"""Inference: a checkpoint loaded once, then sampled or scored by whichever verb needs it.

loading.py (checkpoint → LoadedModel), text_decoding.py (the one batched decode loop),
image_sampling.py (seeded noise → images), heldout.py (the one held-out loss). Used by
generate, eval and training's samples and validation alike. Nothing here writes files.
"""
