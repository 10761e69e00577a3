"""Recipes: one YAML file runs the whole flow, stage by stage. `schema.py` is the recipe's typed
format and its checks (every problem reported with its field); `stages.py` runs data, tokenizers,
text BPE, shards, transformer, pipeline and evaluation, each skipped when its output for the same
inputs exists; `evaluate.py` writes a run's metrics."""
