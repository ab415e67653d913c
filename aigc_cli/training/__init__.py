"""Training: the one loop (loop.py) for `aigc train` and `aigc finetune` (finetune.py), the
processes it runs in (distributed.py), and what it shows and writes while it runs (progress.py,
run_logging.py)."""

from aigc_cli.training.loop import TrainingJob, TrainResult, run_training, train_model

__all__ = ["TrainResult", "TrainingJob", "run_training", "train_model"]
