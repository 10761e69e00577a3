"""The repository's shape: packages in data-flow order that never import from a layer above them,
modules of at most 500 lines, and no reference to a file the repository does not hold."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "unitok"
# lowest first; a module may import from its own layer and the ones before it
LAYERS = [
    ("unitok._version", "unitok.core", "unitok.configs", "unitok.visualize"),
    ("unitok.tokenizer",),
    ("unitok.data",),
    ("unitok.lm",),
    ("unitok.train",),
    ("unitok.hub",),
    ("unitok.pipeline",),
    ("unitok.benchmarks",),
    ("unitok.recipe",),
    ("unitok.experiments",),
    ("unitok.cli", "unitok.__main__"),
]
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer of {__file__}: add it where the data flow puts it")


def unitok_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a unitok module in `path`, wherever it stands."""
    imports = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; unitok imports absolutely"
            names = [node.module] if node.module else []
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        imports += [(node.lineno, name) for name in names if name == "unitok" or name.startswith("unitok.")]
    return imports


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")  # the root is the public API


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    own = layer_of(module_name(path))
    for line, imported in unitok_imports(path):
        assert imported != "unitok", f"{path}:{line}: imports the package root, which imports every layer"
        assert layer_of(imported) <= own, \
            f"{path}:{line}: {module_name(path)} (layer {own}) imports {imported} (layer {layer_of(imported)})"


def test_every_package_says_what_it_holds_and_no_module_is_too_long():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init}: a package docstring says what it holds"
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_layer_check_catches_an_upward_import(tmp_path):
    assert layer_of("unitok.lm.documents") < layer_of("unitok.pipeline")
    upward = tmp_path / "upward.py"
    upward.write_text("import torch\n\ndef f():\n    from unitok.pipeline import UniTokPipeline\n")
    assert unitok_imports(upward) == [(4, "unitok.pipeline")]


CITED = re.compile(r"(?<![\w/.-])((?:docs|experiments|unitok|tests)/[\w./-]*\w)")
TEXTS = ["README.md", "Makefile", "pyproject.toml", "docs/**/*.md", "experiments/**/*", "unitok/**/*.py",
         "unitok/**/*.yaml", "tests/**/*.py"]


def test_every_file_the_repository_cites_is_in_it():
    """Paths such as docs/RDPM.md or unitok/configs/recipes/quickstart.yaml, in docs, code and
    specs, name files or folders of this repository; the original design brief is not one."""
    missing = []
    for pattern in TEXTS:
        for path in REPO.glob(pattern):
            if not path.is_file() or path.suffix in (".png", ".pyc"):
                continue
            text = path.read_text()
            assert "DESIGN.md" not in text or path == Path(__file__), f"{path} cites DESIGN.md, which unitok lacks"
            for cited in CITED.findall(text):
                target = cited.split("::")[0].rstrip(".")
                if not (REPO / target).exists() and "*" not in target and "<" not in target:
                    missing.append(f"{path.relative_to(REPO)}: {cited}")
    assert not missing, missing
