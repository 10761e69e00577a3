"""The package version: one place, read by pyproject.toml, `unitok --version` and saved pipelines."""

__version__ = "0.3.0"
