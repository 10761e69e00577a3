"""unitok: unified multimodal token models.

Images (and later audio and video) become RDPM token sequences that share one vocabulary
with text BPE pieces; one decoder-only transformer learns them all with one next-token loss.
"""

from .media_tokenizer import MediaTokenizer, TokenizerSpec
from .pipeline import UniTokPipeline
from .sampling import SamplerConfig
from .text_bpe import TextBPE
from .vocabulary import Vocabulary

__version__ = "0.1.0"
__all__ = ["MediaTokenizer", "SamplerConfig", "TextBPE", "TokenizerSpec", "UniTokPipeline", "Vocabulary"]
