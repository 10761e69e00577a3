"""Save two different pipelines into one folder, alternately, until killed; run by test_recipe_end_to_end.py.

usage: python save_forever.py PIPELINE TARGET
`b` is PIPELINE with every transformer weight plus 1 and temperature 0.25 in its image sampler.
Prints "saving" once both are in memory.
"""

import dataclasses
import sys

import torch

from unitok import SamplerConfig, UniTokPipeline


def main(source: str, target: str) -> None:
    a, b = UniTokPipeline.from_pretrained(source), UniTokPipeline.from_pretrained(source)
    with torch.no_grad():
        for weight in b.transformer.parameters():
            weight.add_(1.0)
    b.samplers = {"image": dataclasses.replace(b.samplers.get("image", SamplerConfig()), temperature=0.25)}
    print("saving", flush=True)
    while True:
        a.save_pretrained(target)
        b.save_pretrained(target)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
