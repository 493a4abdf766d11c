"""The deployment's start command: `python -m phi3e2e.deploy.container` (the image's CMD).

Azure ML mounts the registered model read-only under $AZUREML_MODEL_DIR (/var/azureml-app/azureml-models/
NAME/VERSION/, the registered folder inside it). `phi3e2e serve` serves a project's finished runs, so this
lays out a small project in a writable folder: gen-model/RUN/onnx-int4/ with a link to each mounted file
(serve writes genai_config.json's thread count; that replaces the link, never the mounted file) and a
run.json saying the run is finished. Then it becomes `phi3e2e serve RUN` on every address, with the key
check left to the endpoint (--gateway-auth), at serve's own limits.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import PROJECT_FILE
from phi3e2e.storage import atomic_write
from phi3e2e.workflow.settings import FinetuneSettings

MODEL_DIR_VARIABLE = "AZUREML_MODEL_DIR"
DEFAULT_HOME = "/tmp/phi3e2e-endpoint"


def find_model(mount: Path) -> Path:
    """The folder under the mount that holds genai_config.json (the registered folder keeps its name)."""
    for depth in range(4):
        found = sorted(mount.glob("/".join(["*"] * depth + ["genai_config.json"])))
        if found:
            return found[0].parent
    raise SystemExit(f"error: no genai_config.json under ${MODEL_DIR_VARIABLE} ({mount}): not an int4 model")


def lay_out(home: Path, model_dir: Path, run: str, algo: str, finished_at: str | None) -> Path:
    """home/ as a project whose one finished run RUN links to the mounted model's files."""
    run_dir = home / "gen-model" / run
    served = run_dir / runs.ONNX_INT4
    served.mkdir(parents=True, exist_ok=True)
    for path in model_dir.rglob("*"):
        link = served / path.relative_to(model_dir)
        if path.is_dir():
            link.mkdir(exist_ok=True)
        elif not link.exists() and not link.is_symlink():
            link.symlink_to(path)
    (home / "model-cache").mkdir(exist_ok=True)
    atomic_write(home / PROJECT_FILE, "{}\n")
    record = runs.RunRecord(name=run, algo=algo, target="aml-endpoint", profile="deployed", base_model="",
                            dataset="", settings=FinetuneSettings(), status="succeeded",
                            finished_at=finished_at or None)  # fmt: skip
    runs.write_record(run_dir, record)
    return home


def main() -> None:
    mount = os.environ.get(MODEL_DIR_VARIABLE)
    run = os.environ.get("PHI3E2E_RUN")
    if not mount or not run:
        raise SystemExit(f"error: ${MODEL_DIR_VARIABLE} and $PHI3E2E_RUN must be set (the deployment sets both)")
    try:
        runs.check_run_name(run)
    except UserError as e:  # the container's log gets the one line, as the CLI prints it
        raise SystemExit(f"error: $PHI3E2E_RUN: {e}") from None
    home = Path(os.environ.get("PHI3E2E_ENDPOINT_HOME", DEFAULT_HOME))
    lay_out(home, find_model(Path(mount)), run, os.environ.get("PHI3E2E_ALGO", "lora"),
            os.environ.get("PHI3E2E_FINISHED_AT"))  # fmt: skip
    os.environ["PHI3E2E_PROJECT_DIR"] = str(home)
    port = os.environ.get("PHI3E2E_PORT", "8000")
    command = [sys.executable, "-m", "phi3e2e", "serve", run, "--host", "0.0.0.0", "--port", port, "--gateway-auth"]
    print("phi3e2e endpoint:", " ".join(command[1:]), flush=True)
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
