"""The specs and recipes unitok ships, as package data, so that they work from an installed wheel:
``recipes/`` (what `unitok train NAME` runs), ``tokenizers/`` and ``models/`` (the specs recipes
name) and ``accelerate/`` (launch configs). `find_recipe` and `find_spec` resolve a user's path
first, then these."""

from __future__ import annotations

from pathlib import Path

from unitok.core.config import ConfigError

SHIPPED = Path(__file__).resolve().parent


def shipped_recipes() -> list[str]:
    return sorted(path.stem for path in (SHIPPED / "recipes").glob("*.yaml"))


def find_recipe(ref: str | Path, named_in: Path | None = None) -> Path:
    """A recipe file: `ref` itself (or relative to the folder of the file `named_in` that names it,
    or that folder's parent), else the shipped recipe of that name (``quickstart``)."""
    path = Path(ref)
    folders = [named_in.parent, named_in.parent.parent] if named_in else []
    for candidate in [path, *(folder / path for folder in folders)]:
        if candidate.is_file():
            return candidate
    shipped = SHIPPED / "recipes" / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if path.parent == Path() and shipped.is_file():
        return shipped
    raise ConfigError(f"{ref}: no such recipe file, nor a shipped recipe ({', '.join(shipped_recipes())})")


def find_spec(ref: str, recipe_path: Path) -> Path:
    """A spec file a recipe names (``tokenizers/x.yaml``): relative to the working directory, the
    recipe's folder, that folder's parent, or the shipped specs; a shipped recipe takes the shipped
    specs first, whatever the working directory holds."""
    candidates = (Path(ref), recipe_path.parent / ref, recipe_path.parent.parent / ref, SHIPPED / ref)
    if recipe_path.resolve().is_relative_to(SHIPPED):
        candidates = (SHIPPED / ref, *candidates)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no such spec file {ref!r} (looked in ., {recipe_path.parent}, {recipe_path.parent.parent} "
                      "and the shipped specs)")
