"""The Hugging Face Hub side of a saved pipeline: load by repo id, push, and its model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from unitok._version import __version__
from unitok.core.atomic import write_text_atomic
from unitok.core.errors import UnitokError

CARD_NAME = "README.md"


def local_folder(name: str | Path, revision: str | None = None, **hub_kwargs: Any) -> Path:
    """`name` itself when it is a folder; otherwise a Hub repo id, which `huggingface_hub` finds in
    its cache or downloads (`HF_HUB_OFFLINE=1` or `local_files_only=True`: the cache only)."""
    if Path(name).is_dir():
        return Path(name)
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        raise FileNotFoundError(f"{name}: no such folder, and not a Hub repo id") from None
    try:
        return Path(snapshot_download(str(name), revision=revision, library_name="unitok",
                                      library_version=__version__, **hub_kwargs))
    except Exception as err:  # offline, not found, gated, no cache: one reason either way
        raise UnitokError(f"{name}: no such folder, and the Hub repo could not be read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from err


def write_model_card(directory: Path, index: dict, recipe: str | None = None, metrics: dict | None = None,
                     samples: str | None = None) -> None:
    """README.md of a saved pipeline: Hub metadata, what it holds, how to load it, and when a
    recipe made it, the recipe, its metrics and its sample grid (a file in `directory`)."""
    modalities = sorted(name for name in index["media_tokenizers"])
    data = ModelCardData(library_name="unitok", tags=["unitok", "rdpm", "multimodal", *modalities],
                         pipeline_tag="text-to-image" if "image" in modalities else None)
    sections = [f"# UniTokPipeline\n\nOne decoder-only transformer over text BPE pieces and RDPM codes of "
                f"{', '.join(modalities)} in one vocabulary (unitok {index['_unitok_version']}).\n",
                "```python\nfrom unitok import UniTokPipeline\n\n"
                "pipe = UniTokPipeline.from_pretrained(\"THIS_FOLDER_OR_REPO_ID\")\n```\n"]
    if samples:
        sections.append(f"## Samples\n\n![samples]({samples})\n")
    if metrics:
        sections.append(f"## Metrics\n\n```json\n{json.dumps(metrics, indent=2)}\n```\n")
    if recipe:
        sections.append(f"## Recipe\n\n```yaml\n{recipe.strip()}\n```\n")
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))
    write_text_atomic(directory / CARD_NAME, str(card))


def push_folder(directory: Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload UniTokPipeline") -> str:
    """Create `repo_id` if needed and upload the saved pipeline in `directory`; returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=commit_message))
