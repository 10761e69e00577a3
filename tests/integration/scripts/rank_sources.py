"""Tokenize a text corpus that differs by rank, as node-local copies of data can; run under
`accelerate launch` by test_shards.py. Every rank must stop with the same reason, before any
rank writes into OUT.

usage: python rank_sources.py PIPELINE OUT
"""

import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from unitok.data.shard_writer import ShardWriter, TokenizeSettings
from unitok.data.shards import ShardError
from unitok.data.sources import TextSource
from unitok.pipeline import PipelineTokenizers


def main(pipeline: Path, out: Path) -> None:
    rank = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).process_index
    corpus = out.parent / f"corpus-rank-{rank}.txt"
    corpus.write_text(f"the text of rank {rank}\n")
    tokenizers = PipelineTokenizers.from_pretrained(pipeline)
    try:
        ShardWriter(out, None, tokenizers.text, tokenizers.vocabulary, TokenizeSettings()).write(TextSource(corpus))
    except ShardError as err:
        print(f"rank {rank}: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
