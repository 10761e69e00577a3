"""Measuring the product, apart from it: `tokenizer_sweep.py` and `generation_sweep.py` train
variants of a recipe and tabulate them (`unitok sweep`; the sweep files and their log live in the
repository's `experiments/`), and `bench.py` measures speed as ratios against baselines run
alongside (`unitok bench`)."""
