"""The transformer's side: how text and media spans become one token stream, and back.
`layout.py` holds the model's stream layout and each modality's decode schedule (which cells each
pass of a block draws); `streams.py` builds a document's positions, inputs, targets and
attention; `batch.py` packs documents into padded batches with 4D masks; `documents.py` turns a
shard row into the training document of its task; `model.py` is the Llama decoder and unitok's
input rule (`StreamModel`); `losses.py` the next-token losses; `sampling.py` the samplers that draw
media blocks group by group, and text."""
