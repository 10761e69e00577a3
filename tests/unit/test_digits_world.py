"""Digits world: deterministic scenes, disjoint splits, captions that parse back, image folders."""

import json
import random

import numpy as np
import pytest
from PIL import Image

from unitok.benchmarks.digits.images import real_renders, render_scene, write_image_folder
from unitok.benchmarks.digits.scenes import (
    COLOR_NAMES,
    DIGIT_WORDS,
    POSITIONS,
    SIZES,
    DigitsWorldConfig,
    Scene,
    build_digits_world,
    canonical_caption,
    caption_for,
    digit_pools,
    heldout_color,
    load_digit_images,
    parse_caption,
)

SMALL = DigitsWorldConfig(train_scenes=600, heldout_scenes=200)


@pytest.fixture(scope="module")
def world():
    return build_digits_world(SMALL)


def test_same_seed_gives_identical_items_and_pixels(world):
    again = build_digits_world(SMALL)
    assert [i.caption for i in again["train"]] == [i.caption for i in world["train"]]
    assert again == world
    for split in ("train", "heldout"):
        assert np.array_equal(real_renders(again[split]), real_renders(world[split]))
    other = build_digits_world(DigitsWorldConfig(seed=1, train_scenes=600, heldout_scenes=200))
    assert [i.scene for i in other["train"]] != [i.scene for i in world["train"]]


def test_keys_are_unique_and_stable(world):
    keys = [item.key for split in world.values() for item in split]
    assert len(set(keys)) == len(keys)
    assert world["train"][123].key == "train-000123"
    assert world["heldout"][0].key == "heldout-000000"


def test_heldout_digit_images_never_used_in_training(world):
    _, labels = load_digit_images()
    pools = digit_pools(SMALL)
    train_pool = {i for pool in pools["train"].values() for i in pool}
    heldout_pool = {i for pool in pools["heldout"].values() for i in pool}
    assert not train_pool & heldout_pool
    assert len(train_pool) + len(heldout_pool) == len(labels)
    assert 0.15 < len(heldout_pool) / len(labels) < 0.25
    for split, pool in (("train", train_pool), ("heldout", heldout_pool)):
        for item in world[split]:
            assert item.scene.digit_index in pool
            assert labels[item.scene.digit_index] == item.scene.digit


def test_unseen_combos_never_in_training(world):
    assert set(heldout_color(d) for d in range(10)) == set(COLOR_NAMES)
    assert not any(item.unseen_combo for item in world["train"])
    assert all(item.scene.color != heldout_color(item.scene.digit) for item in world["train"])
    for item in world["heldout"]:
        assert item.unseen_combo == (item.scene.color == heldout_color(item.scene.digit))


def test_about_half_of_heldout_is_unseen(world):
    share = np.mean([item.unseen_combo for item in world["heldout"]])
    assert 0.4 <= share <= 0.6


def test_training_covers_every_attribute(world):
    scenes = [item.scene for item in world["train"]]
    assert {s.digit for s in scenes} == set(range(10))
    assert {s.color for s in scenes} == set(COLOR_NAMES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert {s.size for s in scenes} == set(SIZES)


def test_canonical_caption():
    assert canonical_caption(7, "red", "left") == "a red 7 on the left"
    assert canonical_caption(3, "blue") == "a blue 3"
    assert parse_caption("a red 7 on the left") == {"digit": 7, "color": "red", "position": "left", "size": None}


def test_parse_caption_round_trip():
    rng = random.Random(0)
    captions = set()
    for n in range(3000):
        scene = Scene(n % 10, COLOR_NAMES[n % 6], POSITIONS[n % 3], SIZES[n % 2], digit_index=0)
        caption = caption_for(scene, rng)
        captions.add(caption)
        parsed = parse_caption(caption)
        assert parsed["digit"] == scene.digit, caption
        assert parsed["color"] == scene.color, caption
        assert parsed["position"] in (scene.position, None), caption
        assert parsed["size"] in (scene.size, None), caption
    parsed = [parse_caption(c) for c in captions]
    assert any(p["position"] is None for p in parsed) and any(p["size"] is None for p in parsed)
    assert any(p["position"] and p["size"] for p in parsed)
    words = {w for c in captions for w in c.split()}
    assert {"7", "seven"} <= words and {"middle", "center", "tiny", "big"} <= words
    assert set(DIGIT_WORDS) <= words


def test_parse_caption_reads_free_text():
    assert parse_caption("A BIG Eight, centre.") == {"digit": 8, "color": None, "position": "center", "size": "large"}
    assert parse_caption("12 things") == {"digit": None, "color": None, "position": None, "size": None}


@pytest.mark.parametrize("image_size", [32, 48, 64])
def test_every_placement_fits_inside_the_image(image_size):
    for position in POSITIONS:
        for size in SIZES:
            for jitter_y in (-1, 0, 1):
                image = render_scene(Scene(8, "cyan", position, size, 8, jitter_y), image_size)
                assert image.size == (image_size, image_size) and image.mode == "RGB"
                pixels = np.asarray(image)
                assert pixels.any()
                assert not pixels[:, 0].any() or position == "left"  # only left may touch the left edge


def test_write_image_folder(world, tmp_path):
    items = world["heldout"][:25]
    folder = write_image_folder(items, tmp_path / "digits", image_size=32)
    lines = (folder / "captions.jsonl").read_text().splitlines()
    assert len(lines) == len(items)
    assert not list(folder.glob("*.tmp"))
    renders = real_renders(items)
    for line, item, expected in zip(lines, items, renders):
        record = json.loads(line)
        assert record["file"] == f"images/{item.key}.png"
        assert (record["caption"], record["key"], record["unseen_combo"]) == (item.caption, item.key, item.unseen_combo)
        assert (record["digit"], record["color"]) == (item.scene.digit, item.scene.color)
        assert (record["position"], record["size"]) == (item.scene.position, item.scene.size)
        with Image.open(folder / record["file"]) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), expected)
