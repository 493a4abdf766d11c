"""Try the fault, bad-input and attack cases of issues 11 and 21 as a user (or an attacker) would,
and count how each ends.

    .venv/bin/python benchmarks/faults.py [--project DIR] [--no-runs]

Each case runs the real `phi3e2e` in a subprocess on a copy of a project with the tiny model and
one finished run (made here: prepare + a 3-step fine-tune, unless --project names one). A case is
clean when it exits 0 or 2 with at most one `error:` line, no Python traceback, and the project's
state checks hold afterwards; otherwise it counts as a traceback, a native crash (killed by a
signal: exit > 128 or < 0), or lost / wrong state. An attack case (`security`: a received project's
templates, a web page reaching `serve`, clients that hold connections) is clean when it is refused
and had no effect; otherwise it is a security finding. --no-runs skips the cases that train (minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phi3e2e import runs
from phi3e2e.project import Project

CASES: list[tuple[str, str]] = []  # (name, outcome)
SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "sample-qa.jsonl"


def cli(project: Project, *args: str, stdin: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root))
    return subprocess.run([sys.executable, "-m", "phi3e2e", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=timeout)  # fmt: skip


def judge(name: str, done: subprocess.CompletedProcess | tuple[int, str], state_ok: bool = True,
          safe: bool = True) -> None:
    rc, output = (done.returncode, done.stdout + done.stderr) if hasattr(done, "returncode") else done
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    if not safe:
        outcome = "security finding"
    elif "Traceback (most recent call last)" in output:
        outcome = "traceback"
    elif rc < 0 or rc > 128:
        outcome = "native crash"
    elif rc not in (0, 2) or len(errors) > 1 or not state_ok:
        outcome = "lost or wrong state"
    else:
        outcome = "clean"
    CASES.append((name, outcome))
    detail = errors[0][:110] if errors else f"exit {rc}"
    print(f"{outcome:<20} {name:<48} {detail}", flush=True)


def copy_project(base: Project, into: Path) -> Project:
    shutil.copytree(base.root, into, symlinks=True)
    return Project(into)


def bad_inputs(base: Project, scratch: Path, run: str) -> None:
    project = copy_project(base, scratch / "inputs")
    data = scratch / "data"
    data.mkdir()
    files = {
        "all-answers-empty.csv": "question,answer\nq1,\nq2,  \n",
        "nested.json": "[" * 100_000 + "]" * 100_000,
        "5000-digits.jsonl": '{"question": "a", "answer": ' + "9" * 5000 + "}\n",
        "lone-surrogate.jsonl": '{"question": "a\\ud800", "answer": "b"}\n',
        "one-huge-line.jsonl": '{"question": "' + "x" * 50_000_000 + '", "answer": "b"}\n',
        "binary.csv": bytes(range(256)).decode("latin-1"),
        "empty.jsonl": "",
        "not-objects.jsonl": "1\n2\n",
    }
    for file, text in files.items():
        (data / file).write_text(text, encoding="utf-8", errors="surrogatepass")
        judge(f"prepare --data {file}", cli(project, "prepare", "--data", str(data / file)))
    (project.datasets / "a-file").write_text("x")
    done = cli(project, "prepare", "--data", str(SAMPLE), "--name", "a-file")
    judge("prepare --name <existing file>", done, done.returncode == 2 and (project.datasets / "a-file").is_file())
    judge("prepare --name 'x\\n'", cli(project, "prepare", "--data", str(data / "nested.json"), "--name", "x\n"))
    for value in (".inf", "1e400", "nan", "-.inf"):
        done = cli(project, "finetune", "--dry-run", "--set", f"training.learning_rate={value}")
        judge(f"finetune --set training.learning_rate={value}", done, done.returncode == 2)
    done = cli(project, "finetune", "--dry-run", "--run-name", "r\n")
    judge("finetune --run-name 'r\\n'", done, done.returncode == 2)
    eval_file = project.gen_model / run / runs.EVAL_FILE
    before = eval_file.read_bytes() if eval_file.exists() else b""
    for args in (["--forms", ""], ["--max-rows", "-1"], ["--max-rows", "0"], ["--forms", "int8"]):
        done = cli(project, "eval", run, *args)
        after = eval_file.read_bytes() if eval_file.exists() else b""
        judge(f"eval {' '.join(args) or repr('')}", done, done.returncode == 2 and after == before)
    for content in (b"[]", b"null", b'{"model": 5}', bytes(range(256)), b"{"):
        project.project_file.write_bytes(content)
        for command in (["finetune", "--dry-run"], ["prepare", "--data", str(data / "all-answers-empty.csv")]):
            judge(f"phi3e2e.json {content[:12]!r}: {command[0]}", cli(project, *command))
    shutil.copy(base.project_file, project.project_file)
    for setting in ("training.learning_rate=true", f"data.max_length={10**24}"):
        done = cli(project, "finetune", "--dry-run", "--set", setting)
        judge(f"finetune --set {setting[:30]}", done, done.returncode == 2)
    done = cli(project, "chat", "--model", str(project.gen_model / run), "--prompt", "caf\udcff")
    judge("chat --prompt <invalid UTF-8>", done, done.returncode == 2)
    staging = project.datasets / ".sample.importing-999999999"
    shutil.copytree(project.datasets / "sample", staging)
    done = cli(project, "finetune", "--dry-run", "--data", staging.name)
    judge("finetune --data <a killed import's folder>", done, done.returncode == 2)
    train = project.datasets / "sample" / "train.jsonl"
    kept = train.read_bytes()
    train.write_bytes(kept + b"{ damaged\n")
    judge("finetune --dry-run on a damaged train.jsonl", cli(project, "finetune", "--dry-run"))
    train.write_bytes(kept)
    done = cli(project, "prepare", "--data", str(SAMPLE), "--name", "sample")
    judge("prepare --name <a dataset runs were trained on>", done, done.returncode == 2 and train.read_bytes() == kept)


def security(base: Project, scratch: Path, run: str) -> None:
    """A project folder received from someone else, a web page reaching `serve`, clients holding connections."""
    import socket

    from phi3e2e.resources import templates_dir

    project = copy_project(base, scratch / "security")
    project.templates.mkdir(exist_ok=True)
    attacks = {
        "template: os.system through globals": '{{ cycler.__init__.__globals__.os.system("touch PWNED") }}',
        "template: list every class": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "template: include /etc/hostname": '{% include "/etc/hostname" %}',
        "template: include ../phi3e2e.json": '{% include "../phi3e2e.json" %}',
    }
    for name, attack in attacks.items():
        text = (templates_dir() / "lora.json.j2").read_text().replace('"lora_dropout"', attack + '"lora_dropout"', 1)
        (project.templates / "lora.json.j2").write_text(text)
        done = cli(project, "finetune", "--dry-run")
        leaked = socket.gethostname() in done.stderr or "__subclasses__" not in attack and "<class" in done.stderr
        judge(name, done, done.returncode == 2, safe=not (project.root / "PWNED").exists() and not leaked)
    shutil.rmtree(project.templates)

    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root), PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "phi3e2e", "serve", "--port", "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        serve_attacks(server)
    finally:
        if server.poll() is None:
            server.kill()


def serve_attacks(server: subprocess.Popen) -> None:
    import http.client
    import socket

    lines = []
    for line in server.stdout:
        lines.append(line)
        if line.startswith("Playground: "):
            break
    port = int(lines[-1].split()[1].rstrip("/").rsplit(":", 1)[1])

    def status(headers: dict) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.putrequest("GET", "/v1/models", skip_host="Host" in headers)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        return connection.getresponse().status

    for name, headers in {"serve: DNS rebinding (Host: attacker.example)": {"Host": f"attacker.example:{port}"},
                          "serve: another site's page (Origin)": {"Origin": "http://attacker.example"}}.items():
        answered = status(headers)
        judge(name, (0, ""), safe=answered in (403, 421))
    idle = []
    try:
        for _ in range(600):  # past the connection bound, never finishing a request head
            idle.append(socket.create_connection(("127.0.0.1", port)))
            idle[-1].sendall(b"GET / HTTP/1.1\r\n")
    except OSError:
        pass
    started = time.monotonic()
    answered = status({})
    judge("serve: 600 idle half-sent connections, then a request", (0, ""),
          safe=answered == 200 and time.monotonic() - started < 5)
    for sock in idle:
        sock.close()
    server.send_signal(signal.SIGINT)
    output = "".join(lines) + server.communicate(timeout=30)[0]
    judge("serve: log after the attacks", (0, output), len(output.splitlines()) < 40)


def corrupt_artifacts(base: Project, scratch: Path, run: str) -> None:
    for file in ("model.onnx.data", "model.onnx", "genai_config.json", "tokenizer.json"):
        for how in ("deleted", "truncated"):
            project = copy_project(base, scratch / f"{file}-{how}")
            target = project.gen_model / run / runs.ONNX_INT4 / file
            if how == "deleted":
                target.unlink()
            else:
                target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 3)])
            model = str(project.gen_model / run / runs.ONNX_INT4)
            judge(f"{file} {how}: chat", cli(project, "chat", "--model", model, "--prompt", "hi", "--max-length", "8"))
            judge(f"{file} {how}: eval", cli(project, "eval", run, "--samples", "1", "--max-rows", "2"))
    for content in (b"[]", bytes(range(256)), b'{"name": "x"}'):
        project = copy_project(base, scratch / f"bad-record-{len(CASES)}")
        shutil.copytree(project.gen_model / run, project.gen_model / "broken")
        (project.gen_model / "broken" / runs.RUN_FILE).write_bytes(content)
        for command in (["chat", "--prompt", "hi", "--max-length", "8"], ["eval", "--samples", "0", "--max-rows", "2"]):
            done = cli(project, *command)
            judge(f"one run.json {content[:8]!r}: {command[0]} on the others", done, done.returncode == 0)


def run_faults(base: Project, scratch: Path) -> None:
    project = copy_project(base, scratch / "runs")
    gen = project.gen_model
    env = dict(os.environ, PHI3E2E_PROJECT_DIR=str(project.root))
    first = subprocess.Popen([sys.executable, "-m", "phi3e2e", "finetune", "--run-name", "x"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    checkpoint = runs.checkpoints_dir(gen, "x") / "checkpoint-20" / "trainer_state.json"
    while not checkpoint.is_file() and first.poll() is None:
        time.sleep(0.3)
    done = cli(project, "finetune", "--run-name", "x")
    judge("same --run-name while it trains", done, done.returncode == 2 and f"process {first.pid}" in done.stderr)
    done = cli(project, "finetune", "--dry-run", "--run-name", "x")
    judge("--dry-run --run-name while it trains", done, done.returncode == 2 and not (gen / "x").exists())
    first.send_signal(signal.SIGTERM)
    output = first.communicate(timeout=120)[0]
    time.sleep(2)
    orphans = subprocess.run(["pgrep", "-f", str(gen / ".x.partial")], capture_output=True, text=True).stdout.split()
    record = runs.try_read_record(runs.failed_dir(gen, "x"))
    judge("SIGTERM during training", (first.returncode, output),
          bool(record and record.status == "failed") and not orphans)  # fmt: skip
    done = cli(project, "finetune", "--resume", "x")
    record = runs.try_read_record(gen / "x")
    judge("--resume after SIGTERM", done, bool(record and record.status == "succeeded" and record.resumed_from))
    piped = subprocess.run(f"{sys.executable} -m phi3e2e finetune --run-name p --set training.max_steps=3 | head -1",
                           shell=True, env=env, capture_output=True, text=True)  # fmt: skip
    record = runs.try_read_record(gen / "p")
    judge("finetune | head -1 (closed stdout)", (0, piped.stderr), bool(record and record.status == "succeeded"))
    shutil.rmtree(project.model_cache / ".onnx-int4", ignore_errors=True)
    evals = [
        subprocess.Popen([sys.executable, "-m", "phi3e2e", "eval", name, "--samples", "1"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name in ("x", "p")
    ]  # fmt: skip
    for name, process in zip(("x", "p"), evals):
        out = process.communicate(timeout=900)[0]
        judge(f"two evals at once ({name})", (process.returncode, out), process.returncode == 0)


def make_project(root: Path) -> tuple[Project, str]:
    from phi3e2e.prepare.prepare_project import prepare
    from phi3e2e.train.finetune import finetune

    project = Project(root)
    prepare(project, tiny=True, say=lambda _: None)
    finetune(project, algo="lora", target="local", run_name="base", set_args=["training.max_steps=3"],
             say=lambda _: None)  # fmt: skip
    return project, "base"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--project", type=Path, help="a project with the tiny model and a finished run (copied)")
    parser.add_argument("--run", help="the finished run to use in --project")
    parser.add_argument("--no-runs", action="store_true", help="skip the cases that train")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phi3e2e-faults-") as folder:
        scratch = Path(folder)
        if args.project:
            base = Project(args.project.resolve())
            run = args.run or runs.finished_runs(base.gen_model)[0].name
        else:
            base, run = make_project(scratch / "base")
        bad_inputs(base, scratch, run)
        security(base, scratch, run)
        corrupt_artifacts(base, scratch, run)
        if not args.no_runs:
            run_faults(base, scratch)
    counts = {outcome: sum(1 for _, o in CASES if o == outcome)
              for outcome in ("clean", "security finding", "traceback", "native crash", "lost or wrong state")}
    print(json.dumps({"cases": len(CASES), **counts}))


if __name__ == "__main__":
    main()
