"""The package's layout is what the README's module map says, and its size limits hold."""

from __future__ import annotations

import ast
import re

from .conftest import ROOT

PACKAGE = ROOT / "src" / "ticketlab"


def _map() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- module map -->", 1)[1].split("<!-- end module map -->", 1)[0]
    lines = [ln for ln in block.splitlines() if ln and not ln.startswith("```")]
    return {ln.split()[0]: ln.split(None, 1)[1] for ln in lines}


def _entries() -> set[str]:
    return {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
            if p.name != "__pycache__" and not p.name.endswith(".egg-info")}


def test_module_map_lists_every_top_level_entry_and_nothing_else():
    assert set(_map()) == _entries()
    assert len(_entries()) <= 20


def test_module_map_names_every_module_of_each_subpackage():
    for entry, text in _map().items():
        if not entry.endswith("/"):
            continue
        folder = PACKAGE / entry.rstrip("/")
        listed = set(re.findall(r"[a-z_]+/?", text.split(":", 1)[1]))
        modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"} | \
                  {p.name + "/" for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"}
        missing = modules - listed
        if entry in ("pruners/", "init/", "data/", "models/"):  # discovered: "one module per method/init/..."
            missing = {m for m in missing if "register" not in (folder / f"{m}.py").read_text()}
        assert not missing, f"{entry} modules missing from the README's module map: {sorted(missing)}"
        assert (folder / "__init__.py").exists() and ast.get_docstring(ast.parse((folder / "__init__.py")
                                                                                 .read_text())), entry


def test_no_file_over_550_lines_and_no_function_over_60():
    long_files, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 550:
            long_files.append(str(path.relative_to(PACKAGE)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert long_files == [] and long_functions == []


def test_nothing_cites_files_users_do_not_have():
    outside = "/".join(["shared", ""])  # the folder beside a developer's checkout, which users do not have
    offenders = [str(p.relative_to(ROOT)) for d in ("src", "tests") for p in (ROOT / d).rglob("*.py")
                 if outside in p.read_text()]
    assert offenders == []
