"""Issue 15's structure rules hold for the whole package (tools/check_structure.py): no function
outside kernels/ longer than 80 code lines, no two modules importing each other (nor a longer cycle)."""

from __future__ import annotations

import ast
import importlib.util
import textwrap

from conftest import REPO

_spec = importlib.util.spec_from_file_location("check_structure", REPO / "tools" / "check_structure.py")
cs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cs)


def test_package_structure():
    assert cs.findings(REPO / "pyaeplus") == []


def test_the_checker_finds_what_it_is_for(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a  # deferred imports count\n")
    (pkg / "c.py").write_text("from . import a\n")   # one-way: no finding
    long_body = "\n".join(f"    x{i} = {i}" for i in range(80))  # + the def line: 81
    (pkg / "long.py").write_text(f"def g():\n    '''doc\n    lines'''\n    # comment\n{long_body}\n")
    (pkg / "short.py").write_text("def h():\n" + textwrap.indent("\n".join(f"x{i} = {i}" for i in range(79)), "    "))
    found = cs.findings(pkg)
    assert any(f.startswith("long function: 81 code lines") and "long.py" in f and " g" in f for f in found), found
    assert not any("short.py" in f for f in found)
    assert "import cycle: pkg.a <-> pkg.sub.b" in found
    assert not any("pkg.c" in f for f in found)
    ast.parse((REPO / "tools" / "check_structure.py").read_text())
