"""Integration fixtures: one tiny end-to-end recipe run per session, image-only and multimodal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_tiny_multimodal_recipe, write_tiny_recipe
from unitok.recipe.schema import load_recipe
from unitok.recipe.stages import RecipeRun


@pytest.fixture(scope="session")
def tiny_multimodal_run(tmp_path_factory) -> Path:
    """Runs the tiny image + audio + video recipe once (all stages); returns its output folder."""
    folder = tmp_path_factory.mktemp("tiny-multimodal")
    RecipeRun(load_recipe(write_tiny_multimodal_recipe(folder)), log=lambda _: None).run()
    return folder / "run"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Runs the tiny recipe once (all stages); returns its output folder."""
    folder = tmp_path_factory.mktemp("tiny")
    RecipeRun(load_recipe(write_tiny_recipe(folder)), log=lambda _: None).run()
    return folder / "run"
