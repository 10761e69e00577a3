"""Training loops (accelerate): the media tokenizers and the transformer."""
