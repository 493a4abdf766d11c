"""An installed wheel (not only the source tree) finds its templates and sample data."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from helpers import REPO

PROBE = """
import json, phi3e2e
from phi3e2e.workflow.render import WorkflowPaths, render_model_builder, render_workflow
from phi3e2e.resources import sample_dataset, templates_dir
from phi3e2e.workflow.settings import build_settings
paths = WorkflowPaths("m", "t.jsonl", None, "o", "c", "k")
rendered = [render_workflow(algo, algo == "qlora", build_settings("tiny", {}), paths) for algo in ("lora", "qlora")]
rendered.append(render_model_builder("m", "cpu", "int4", {}))
print(json.dumps([phi3e2e.__file__, str(templates_dir()), str(sample_dataset()), [str(r.template) for r in rendered],
                  [list(r.config["passes"].values())[-1]["type"] for r in rendered]]))  # the int4 / export pass
"""


def test_wheel_carries_templates_and_sample_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("phi3e2e-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n for n in names if n.startswith("phi3e2e/templates/")) == [
        "phi3e2e/templates/adapter-int4.json.j2", "phi3e2e/templates/lora.json.j2", "phi3e2e/templates/model-builder.json.j2",
        "phi3e2e/templates/qlora.json.j2"]
    assert "phi3e2e/sample_data/sample-qa.jsonl" in names
    assert "phi3e2e/aml/conda.yaml" in names  # the Azure ML job's environment
    # Every module of the source tree (a too-wide .gitignore pattern once left src/phi3e2e/build/ out).
    package = REPO / "src" / "phi3e2e"
    sources = {f"phi3e2e/{path.relative_to(package).as_posix()}" for path in package.rglob("*.py")
               if "__pycache__" not in path.parts}  # fmt: skip
    assert sources - set(names) == set()

    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    # Run from an unrelated folder with the unpacked wheel first on the path, ahead of the source tree.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout
    module, templates, sample, used, int4 = json.loads(out.strip().splitlines()[-1])
    for path in (module, templates, sample, *used):
        assert Path(path).is_relative_to(installed), path
    assert [Path(path).name for path in used] == ["lora.json.j2", "qlora.json.j2", "model-builder.json.j2"]
    assert int4 == ["ModelBuilder"] * 3
