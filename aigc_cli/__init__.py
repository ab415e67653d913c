"""aigc: prepare data for, train, fine-tune, generate with and evaluate generative models."""

__version__ = "0.1.0"
