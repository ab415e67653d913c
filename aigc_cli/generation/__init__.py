"""`aigc generate`: prompts and files in, completions or images out, a manifest beside them.

text.py (JSONL completions), images.py (PNG files and grids), manifest.py (what is finished).
The model arithmetic is the inference layer's (aigc_cli/inference/).
"""
