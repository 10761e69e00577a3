"""unitok: unified multimodal token models.

Images, audio spectrograms and video clips become RDPM token sequences that share one vocabulary
with text BPE pieces; one decoder-only transformer learns them all with one next-token loss.
The packages follow the data flow: `tokenizer` (media and text to ids), `data` (shard sets and the
training mixture), `lm` (streams, documents, model, samplers), `train`, then `pipeline`, `recipe`
and the `cli` on top; `benchmarks` holds the embedded digits world, `experiments` the sweeps and
the bench (docs/ARCHITECTURE.md).
"""

from unitok._version import __version__
from unitok.lm.layout import DecodeSchedule, StreamLayout
from unitok.lm.sampling import SamplerConfig
from unitok.pipeline import UniTokPipeline
from unitok.tokenizer.media_tokenizer import MediaTokenizer, TokenizerSpec
from unitok.tokenizer.text_bpe import TextBPE
from unitok.tokenizer.vocabulary import Vocabulary

__all__ = ["DecodeSchedule", "MediaTokenizer", "SamplerConfig", "StreamLayout", "TextBPE", "TokenizerSpec",
           "UniTokPipeline", "Vocabulary", "__version__"]
