"""Benchmarks the product is measured on. `digits/` is the embedded digits world: its data (scenes,
DTMF tones, moving clips, rendered from scikit-learn's real handwritten digits), its scorers
(pixel readers, a digit classifier, a DTMF decoder, a Fréchet distance) and the evaluation of every
direction a recipe trains."""
