"""Items in, token shards out, rows back for training. `sources.py` reads folders, `datasets`
datasets and text corpora as captioned items; `tasks.py` names what a row trains (text_to_image,
image_to_text, …); `shard_writer.py` tokenizes a source into a resumable parquet shard set;
`shards.py` reads, verifies and inspects one; `mixture.py` streams rows from a weighted list of
shard sets, each rank its own, resumable at the exact row."""
