"""The digits world: coloured, captioned scenes of real handwritten digits (`scenes.py`,
`images.py`), the same digits dialled as DTMF tones (`tones.py`) and moving in short clips
(`clips.py`), written as caption folders by `world.py`; read back by `readers.py` (colour,
position, direction), `classifier.py` (the digit), `dtmf.py` (dialled keys) and `frechet.py`;
`scores.py` scores each direction, `evaluate.py` evaluates a trained run and `diagnostics.py` says
where text→image fails."""
