"""How many examples a small CNN needs to read the digit, from the clean state s_0 and from pixels.

A probe for issue #33, apart from the product: it trains a 10-way digit classifier with direct
supervision (AdamW 3e-3, batches of 32) on a run's digits-world training scenes and scores 500
held-out scenes after 4,800 / 9,600 / 19,200 / 38,400 examples. On s_0 it is unitok's conv reader
(`unitok.lm.reader.ConvReader`, two 3x3 convolutions of 64 channels) with its features averaged
over the latent and a linear head; on pixels, three 3x3 convolutions of 64 channels with 2x2 max
pools, averaged, linear. What it bounds: how fast any reader trained from scratch on these scenes
can learn the digit, before a transformer and a caption loss stand between it and the label.

Run:  python experiments/probes/digit_from_s0.py RUN_FOLDER   (a finished quickstart run, e.g. runs/quickstart)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from unitok import UniTokPipeline
from unitok.benchmarks.digits.scenes import parse_caption
from unitok.lm.reader import ConvReader, ReaderSpec

REPORT_AT = (150, 300, 600, 1200)  # steps of 32 examples


def scenes(run: Path, split: str, count: int) -> tuple[list[Image.Image], torch.Tensor]:
    folder = run / "data" / "image" / split
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()][:count]
    return ([Image.open(folder / line["file"]).convert("RGB") for line in lines],
            torch.tensor([parse_caption(line["caption"])["digit"] for line in lines]))


def clean_states(pipe: UniTokPipeline, images: list[Image.Image]) -> torch.Tensor:
    """(B, N, C) s_0 of each image, tokenized with its index as its noise seed."""
    tokenizer, parts = pipe.tokenizer_for("image"), []
    for start in range(0, len(images), 250):
        chunk = images[start:start + 250]
        ids = tokenizer.encode_tensor(tokenizer.to_batch(chunk),
                                      [torch.Generator().manual_seed(start + i) for i in range(len(chunk))])
        with torch.no_grad():
            clean = tokenizer.quantizer.block_inputs(ids)[0][:, -1]
        parts.append(clean[..., :clean.shape[-1] // 2])
    return torch.cat(parts)


class StateClassifier(nn.Module):
    def __init__(self, latent_shape: tuple[int, ...], channels: int):
        super().__init__()
        self.reader = ConvReader(latent_shape, channels, ReaderSpec("conv", 64, 1), 10, state_row=0)
        self.cells = int(np.prod(latent_shape))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.reader(states.flatten(0, 1)).unflatten(0, (-1, self.cells)).mean(1)


def pixel_classifier() -> nn.Module:
    def block(cin: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, 64, 3, padding=1), nn.GELU()]
    return nn.Sequential(*block(3), nn.MaxPool2d(2), *block(64), nn.MaxPool2d(2), *block(64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def accuracy_by_examples(model: nn.Module, train: tuple, heldout: tuple) -> dict[int, float]:
    torch.manual_seed(0)
    optimizer, draws, scores = torch.optim.AdamW(model.parameters(), 3e-3), torch.Generator().manual_seed(0), {}
    (x, y), (x_test, y_test) = train, heldout
    for step in range(1, max(REPORT_AT) + 1):
        batch = torch.randint(0, len(y), (32,), generator=draws)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in REPORT_AT:
            with torch.no_grad():
                scores[32 * step] = round((model(x_test).argmax(-1) == y_test).float().mean().item(), 3)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a finished quickstart-style run folder (its data/ and model/)")
    run = parser.parse_args().run
    pipe = UniTokPipeline.from_pretrained(run / "model")
    (train_images, y), (test_images, y_test) = scenes(run, "train", 8000), scenes(run, "heldout", 500)
    tokenizer = pipe.tokenizer_for("image")
    states = (clean_states(pipe, train_images), y), (clean_states(pipe, test_images), y_test)
    torch.manual_seed(0)
    on_states = accuracy_by_examples(StateClassifier(tuple(tokenizer.latent_shape),
                                                     tokenizer.spec.autoencoder.latent_channels), *states)

    def pixels(images):
        return torch.tensor(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255

    torch.manual_seed(0)
    on_pixels = accuracy_by_examples(pixel_classifier(), (pixels(train_images), y), (pixels(test_images), y_test))
    print("| examples | CNN on s_0 | CNN on pixels |\n|---|---|---|")
    for examples in on_states:
        print(f"| {examples} | {on_states[examples]} | {on_pixels[examples]} |")


if __name__ == "__main__":
    main()
