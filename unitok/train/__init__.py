"""Training loops on accelerate: `tokenizer.py` fits a media tokenizer (autoencoder + RDPM
codebook), `lm.py` the transformer on a shard mixture with checkpoints and exact resume,
`checkpoints.py` what a checkpoint holds; `common.py` the schedule, precision and data cycling both
loops share."""
