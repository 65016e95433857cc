"""The README's speed figures are what benchmarks/readme_figures.py writes from the committed
results (benchmarks/results/*.json): a figure typed from memory, or results re-run without
regenerating the README, fail here."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "benchmarks" / "readme_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_speed_figures_match_the_committed_results(capsys):
    rf = _script()
    rc = rf.main(["--check"])
    assert rc == 0, capsys.readouterr().err + "\n" + rf.render()
    assert rf.render() in (REPO / "README.md").read_text()


def test_check_fails_when_a_figure_or_a_result_changes(tmp_path):
    rf = _script()
    results = tmp_path / "results"
    shutil.copytree(REPO / "benchmarks" / "results", results)
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    args = ["--results", str(results), "--readme", str(readme)]
    assert rf.main(["--check", *args]) == 0
    assert "3.86x pytorch_msssim" in readme.read_text()
    readme.write_text(readme.read_text().replace("3.86x pytorch_msssim", "14x pytorch_msssim"))
    assert rf.main(["--check", *args]) == 1
    assert rf.main(args) == 0 and rf.main(["--check", *args]) == 0          # regenerated
    doc = json.loads((results / "ssim-cpu-2c.json").read_text())
    for r in doc["rows"]:
        if r["provider"] == "pyaeplus[cpu]" and r["mode"] == "full":
            r["median_ms"] *= 2
    (results / "ssim-cpu-2c.json").write_text(json.dumps(doc))
    assert rf.main(["--check", *args]) == 1


def test_no_block_is_a_clear_error(tmp_path):
    rf = _script()
    readme = tmp_path / "README.md"
    readme.write_text("# no figures here\n")
    with pytest.raises(ValueError, match="speed-figures:begin"):
        rf.main(["--check", "--readme", str(readme)])
