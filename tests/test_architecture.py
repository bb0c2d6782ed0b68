"""The layout is the architecture: which module may import which, and every module says what it uses.

ARCHITECTURE.md draws the layers; ``RULES`` here is the same table, checked
against the imports of every module of ``jaxnorm`` and ``kernels/``
(``jaxnorm_kernels``). Every module's docstring ends with a ``Uses:``
paragraph naming the jaxnorm modules it imports; it is checked against the
imports too, so neither the page nor the docstrings can drift from the code.
"""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"jaxnorm": REPO / "jaxnorm", "jaxnorm_kernels": REPO / "kernels"}

_CORE_BASICS = ["jaxnorm._core.reduction", "jaxnorm._core.validate", "jaxnorm._core.params",
                "jaxnorm._core.collectives", "jaxnorm._core.remat"]
_MATH = ["jaxnorm._core.*", "jaxnorm._lowering.*"]

# (modules, the jaxnorm modules they may import): fnmatch patterns, first match wins.
RULES = [
    (_CORE_BASICS + ["jaxnorm._lowering.per_platform"], []),
    (["jaxnorm._lowering.xla_cpu"], ["jaxnorm._core.reduction", "jaxnorm._lowering.per_platform"]),
    (["jaxnorm._lowering.triton_dispatch"], ["jaxnorm_kernels.*"]),
    (["jaxnorm._core.moments", "jaxnorm._core.normalize"],
     _CORE_BASICS + ["jaxnorm._core.moments", "jaxnorm._lowering.per_platform", "jaxnorm._lowering.xla_cpu"]),
    (["jaxnorm._schemes.batch.*"], _MATH + ["jaxnorm._schemes.batch.*"]),
    (["jaxnorm._schemes.per_example.*"], _MATH + ["jaxnorm._schemes.per_example.*"]),
    (["jaxnorm._schemes.weight.*"], _MATH + ["jaxnorm._schemes.weight.*"]),
    (["jaxnorm._schemes.local.*"],
     _MATH + ["jaxnorm._schemes.local.*", "jaxnorm._schemes.batch.*", "jaxnorm._schemes.per_example.channel_setup"]),
    (["jaxnorm._schemes.switchable"], _MATH + ["jaxnorm._schemes.batch.*"]),
    (["jaxnorm._core", "jaxnorm._lowering", "jaxnorm._schemes", "jaxnorm._schemes.*"], []),  # package docstrings
    (["jaxnorm"], ["jaxnorm._schemes.*"]),
    (["jaxnorm.linen", "jaxnorm.linen.*"], ["jaxnorm", "jaxnorm.linen.*", "jaxnorm._schemes.batch.running_stats"]),
    (["jaxnorm.nnx", "jaxnorm.nnx.*"],
     ["jaxnorm", "jaxnorm.nnx.*", "jaxnorm.linen.*", "jaxnorm._schemes.batch.running_stats"]),
    (["jaxnorm.torch_import"], ["jaxnorm", "jaxnorm.linen"]),
    (["jaxnorm.reference"], []),
    (["jaxnorm.bench", "jaxnorm.bench.*", "jaxnorm.__main__"],
     ["jaxnorm", "jaxnorm.reference", "jaxnorm._core.moments", "jaxnorm.bench", "jaxnorm.bench.*"]),
    (["jaxnorm_kernels", "jaxnorm_kernels.*"], ["jaxnorm_kernels.*"]),
]


def _name(package: str, root: pathlib.Path, path: pathlib.Path) -> str:
    parts = (package, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_name(pkg, root, p): p for pkg, root in PACKAGES.items() for p in sorted(root.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The jaxnorm modules ``path`` imports (``from pkg import module`` counts as the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{name}: relative import (the layout is read from absolute imports)")
    return found - {name}


def _documented(doc: str) -> set[str] | None:
    """The modules named by the docstring's closing ``Uses:`` paragraph (None without one)."""
    m = re.search(r"(?:^|\n\n)Uses: (.*?)\s*$", doc, re.S)
    if m is None:
        return None
    text = " ".join(m.group(1).split())
    if text == "no other jaxnorm module.":
        return set()
    named = set()
    for g in re.finditer(r"(jaxnorm[\w.]*?)\.?(?= \(|,|\.$|$)(?: \(([\w, ]+)\))?", text.split(". ")[0]):
        named |= {f"{g.group(1)}.{leaf.strip()}" for leaf in g.group(2).split(",")} if g.group(2) else {g.group(1)}
    return named


def _rule(name: str):
    for modules, allowed in RULES:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in modules):
            return allowed
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name):
    allowed = _rule(name)
    assert allowed is not None, f"{name} is in no layer: add it to RULES here and to ARCHITECTURE.md"
    bad = {m for m in _imports(name, MODULES[name]) if not any(fnmatch.fnmatchcase(m, p) for p in allowed)}
    assert not bad, f"{name} imports {sorted(bad)}, outside its layer ({allowed})"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("jaxnorm") and "kernels" not in n))
def test_docstring_says_what_the_module_holds_and_uses(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc, f"{name} has no module docstring"
    summary = doc.splitlines()[0]
    assert summary.strip() and len(summary) <= 110, f"{name}: the first line should be a one-line summary"
    documented = _documented(doc)
    assert documented is not None, f"{name}: the docstring should end with a 'Uses:' paragraph"
    assert documented == _imports(name, MODULES[name]), (
        f"{name}: 'Uses:' names {sorted(documented)}, the imports are {sorted(_imports(name, MODULES[name]))}")


def test_the_oracles_and_the_kernels_import_nothing_of_jaxnorm():
    assert _imports("jaxnorm.reference", MODULES["jaxnorm.reference"]) == set()
    for name, path in MODULES.items():
        if name.startswith("jaxnorm_kernels"):
            assert not {m for m in _imports(name, path) if m.startswith("jaxnorm.") or m == "jaxnorm"}, name


def test_no_two_module_names_a_newcomer_cannot_tell_apart():
    """Module file names are unique across the package, except the two Flax front ends' parallel files."""
    seen: dict[str, str] = {}
    for name, path in MODULES.items():
        if path.name == "__init__.py" or name.startswith(("jaxnorm.nnx.", "jaxnorm_kernels")):
            continue
        assert path.stem not in seen, f"{name} and {seen[path.stem]} share a file name"
        seen[path.stem] = name
    linen = {p.name for p in (REPO / "jaxnorm" / "linen").glob("*.py")}
    nnx = {p.name for p in (REPO / "jaxnorm" / "nnx").glob("*.py")}
    assert nnx == linen, "jaxnorm.nnx mirrors jaxnorm.linen file by file"


def test_tests_mirror_the_package_and_have_unique_names():
    tests = REPO / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert {"core", "lowering", "schemes", "linen", "nnx", "kernels", "bench"} <= folders
    schemes = {p.name for p in (REPO / "jaxnorm" / "_schemes").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert schemes <= {p.name for p in (tests / "schemes").iterdir() if p.is_dir()}
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)), "test files share a name"


def test_architecture_page_names_every_folder_and_is_linked_from_the_readme():
    page = (REPO / "ARCHITECTURE.md").read_text()
    for folder in ["_core/", "_lowering/", "_schemes/", "batch/", "per_example/", "local/", "weight/",
                   "linen/", "nnx/", "bench/", "studies/"]:
        assert folder in page, folder
    for name in MODULES:
        if name.startswith(("jaxnorm._core.", "jaxnorm._lowering.")):
            assert name.rsplit(".", 1)[1] + ".py" in page, name
    assert "ARCHITECTURE.md" in (REPO / "README.md").read_text()
