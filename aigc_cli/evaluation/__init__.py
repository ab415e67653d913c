"""`aigc eval`: metrics, their inputs, the report and the quality gates.

- scoring.py: `evaluate`, every metric in eval.metrics scored and written as one report
- inputs.py: predictions and references read as streams, paired item by item
- text_metrics.py: BLEU/chrF/TER, ROUGE, CIDEr-D, labels and diversity, in chunks
- images.py and image_metrics.py: FID/KID, coverage, PSNR/SSIM and an image model's loss
- report.py: report.json, the Markdown table beside it, the gates

Scoring text files needs neither a config nor torch: this package imports torch only inside the
functions that score a model or images.
"""

from aigc_cli.evaluation.scoring import evaluate

__all__ = ["evaluate"]
