"""What a run leaves on disk and how it is kept safe: atomic writes, checksummed checkpoints,
locks, provenance records, and `aigc runs` / `aigc info`'s reading of them (torch-free)."""
