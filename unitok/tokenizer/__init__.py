"""Media and text into ids and back. `adapters/` read and write each modality's files and turn them
into normalised tensors; `autoencoder.py` maps those tensors to a latent grid; `rdpm.py` quantizes
the latent's noise trajectory into blocks of codes; `media_tokenizer.py` puts the three together
(`MediaTokenizer.encode` / `decode`); `text_bpe.py` is the sentencepiece BPE for captions; and
`vocabulary.py` lays every tokenizer's ids, and the transformer's input rows, out in one shared
id space."""
