"""What a run keeps on disk, on every backend: its directory lock and its atomic checkpoint and result files."""
