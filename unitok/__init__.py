"""unitok: unified multimodal token models.

Images, audio spectrograms and video clips become RDPM token sequences that share one vocabulary
with text BPE pieces; one decoder-only transformer learns them all with one next-token loss.
"""

__version__ = "0.2.0"  # before the imports: pipeline.py records it in model_index.json

from .media_tokenizer import MediaTokenizer, TokenizerSpec
from .pipeline import UniTokPipeline
from .sampling import SamplerConfig
from .text_bpe import TextBPE
from .vocabulary import Vocabulary

__all__ = ["MediaTokenizer", "SamplerConfig", "TextBPE", "TokenizerSpec", "UniTokPipeline", "Vocabulary"]
