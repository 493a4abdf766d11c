"""The model card of a pushed run: README.md with the Hub's YAML front matter, written from run.json and eval.json.

Everything in run.json and eval.json that a user chose (run and dataset names, paths, templates) is
hostile text here: the front matter is written by yaml.safe_dump (no hand-made YAML), and in the
Markdown body such text only ever appears inside a code span whose fence is longer than any run of
backticks in it, on one line, so it can neither end the span nor start a heading, a link or HTML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import yaml

from phi3e2e import runs
from phi3e2e.chat_format import chat_prompt
from phi3e2e.prepare.models import TINY_MARKER
from phi3e2e.project import Project
from phi3e2e.workflow.model_family import FAMILY

# The Hub's `library_name` for each form: what loads it.
LIBRARY = {"int4": "onnxruntime-genai", "merged": "transformers", "adapter": "peft"}
FORM_DIRS = {"int4": runs.ONNX_INT4, "merged": runs.MERGED, "adapter": runs.ADAPTER}
FORM_TAGS = {
    "int4": ["onnx", "onnxruntime-genai", "int4"],
    "merged": ["transformers", "safetensors"],
    "adapter": ["peft", "lora"],
}
# LICENSE files as the Hub ships them, by their first line (Phi-3's is "MIT License").
LICENSE_FIRST_LINES = {"mit license": "mit", "apache license": "apache-2.0"}
_HUB_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")


def code(text: object) -> str:
    """`text` as an inline code span that nothing in it can break out of (one line, a long enough fence)."""
    flat = " ".join(str(text).split()) or "(empty)"
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or longest else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def base_model_hub_id(project: Project, record: runs.RunRecord) -> Optional[str]:
    """The base model's Hub id when one is known: a Hub id as recorded (Azure ML runs), or a model-cache/
    folder named as a Phi family model that `prepare` downloads (model-cache/Phi-3-mini-4k-instruct).
    None for the tiny model and other local folders: the Hub would reject or mislink a made-up id."""
    base = record.base_model
    folder = project.resolve(base)
    if _HUB_ID.match(base) and not folder.exists():
        return base
    if (folder / TINY_MARKER).is_file():
        return None
    return next((member.hub_id for member in FAMILY if member.hub_id.split("/")[-1] == folder.name), None)


def tiny_twin_of(project: Project, record: runs.RunRecord) -> Optional[str]:
    """The Hub model a tiny random-weight twin stands in for, when the base model is one."""
    marker = project.resolve(record.base_model) / TINY_MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "a Phi model"
    return str(data.get("of") or "microsoft/Phi-3-mini-4k-instruct")


def base_model_license(project: Project, record: runs.RunRecord) -> Optional[str]:
    """The Hub licence id of the base model, from its folder's LICENSE file; None when not known."""
    folder = project.resolve(record.base_model)
    for license_file in sorted(folder.glob("LICENSE*")) if folder.is_dir() else []:
        try:
            first = next((line.strip() for line in license_file.read_text(encoding="utf-8").splitlines() if line.strip()), "")
        except (OSError, UnicodeDecodeError):
            continue
        for start, hub_id in LICENSE_FIRST_LINES.items():
            if first.lower().startswith(start):
                return hub_id
    return None


def read_evaluation(run_dir: Path) -> Optional[dict]:
    """eval.json, or None when the run was not evaluated (or the file is unreadable)."""
    try:
        data = json.loads((run_dir / runs.EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("losses"), dict) else None


def front_matter(project: Project, record: runs.RunRecord, form: str) -> dict:
    """The Hub's metadata. `datasets` is left out: phi3e2e trains on local files (datasets/NAME/), never on a
    Hub dataset it could name; the card's body gives the dataset's name and fingerprint instead."""
    metadata: dict = {}
    hub_id = base_model_hub_id(project, record)
    if hub_id:
        metadata["base_model"] = hub_id
    metadata["library_name"] = LIBRARY[form]
    metadata["pipeline_tag"] = "text-generation"
    metadata["tags"] = ["phi3e2e", "phi3", "fine-tuned", record.algo, *FORM_TAGS[form]]
    license_id = base_model_license(project, record)
    if license_id:
        metadata["license"] = license_id
    return metadata


def model_card(project: Project, run_dir: Path, form: str, repo_id: str) -> str:
    """README.md for `form` of the run in `run_dir`, as it goes to `repo_id`."""
    record = runs.read_record(run_dir)
    evaluation = read_evaluation(run_dir)
    metadata = yaml.safe_dump(front_matter(project, record, form), sort_keys=False, allow_unicode=False)
    lines = ["---", metadata.rstrip("\n"), "---", ""]
    lines += [f"# {repo_id.split('/')[-1]}", ""]
    lines += _about(project, record, form)
    lines += _training(record)
    lines += _held_out(evaluation)
    lines += _usage(record, form, repo_id)
    lines += ["", f"Made with phi3e2e from run {code(record.name)}; the run's own record is `run.json` in the project "
              "that trained it."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _about(project: Project, record: runs.RunRecord, form: str) -> list[str]:
    what = {
        "int4": "an int4 ONNX Runtime GenAI model (Olive ModelBuilder) of the fine-tuned model",
        "merged": "the base model with the LoRA adapter merged in (Hugging Face transformers, safetensors)",
        "adapter": "the LoRA adapter alone (PEFT); load it on top of the base model",
    }[form]
    hub_id = base_model_hub_id(project, record)
    twin = tiny_twin_of(project, record)
    if hub_id:
        base = f"[{hub_id}](https://huggingface.co/{hub_id})"
    elif twin:
        base = f"{code(record.base_model)}, a tiny random-weight twin of {code(twin)} made locally (a test model)"
    else:
        base = f"{code(record.base_model)} (a local model folder)"
    dataset_name = Path(record.dataset).name
    algo = {"lora": "LoRA", "qlora": "QLoRA"}.get(record.algo, record.algo)
    lines = [f"A {algo} fine-tune of a Phi model, made with phi3e2e (Microsoft Olive). This repo holds "
             f"{what}.", "", f"- Base model: {base}", f"- Dataset: {code(dataset_name)} (a local dataset, not on "
             "the Hub)"]  # fmt: skip
    for split, digest in sorted((record.data_sha256 or {}).items()):
        lines.append(f"  - {code(split)} sha256 {code(digest)}")
    if not record.data_sha256:
        lines.append("  - no fingerprint recorded for this run")
    return lines + [""]


def _training(record: runs.RunRecord) -> list[str]:
    settings, training = record.settings, record.settings.training
    length = f"{training.max_steps} steps" if training.max_steps > 0 else f"{training.num_train_epochs:g} epochs"
    lines = ["## Training", "", "| setting | value |", "|---|---|", f"| algorithm | {record.algo} |",
             f"| LoRA r / alpha / dropout | {settings.lora.r} / {settings.lora.alpha:g} / {settings.lora.dropout:g} |",
             f"| trained modules | {code(record.trained_modules)} |",
             f"| learning rate | {training.learning_rate:g} ({code(training.lr_scheduler_type)}) |",
             f"| length | {length} |",
             f"| batch | {training.per_device_train_batch_size} x {training.gradient_accumulation_steps} "
             "gradient accumulation |",
             f"| max length | {settings.data.max_length} tokens |", f"| seed | {training.seed} |"]  # fmt: skip
    if record.algo == "qlora":
        q = settings.qlora
        lines.append(f"| 4-bit quantization | {code(q.quant_type)}, double quant {q.double_quant}, compute "
                     f"{code(q.compute_dtype)} |")  # fmt: skip
    if record.train_loss:
        lines.append(f"| training loss | {record.train_loss.first:.3f} -> {record.train_loss.last:.3f} |")
    if record.duration_s is not None:
        lines.append(f"| duration | {record.duration_s:.0f} s ({code(record.target)}) |")
    versions = ", ".join(f"{name} {version}" for name, version in sorted(record.versions.items()) if version)
    if versions:
        lines += ["", f"Stack: {code(versions)}."]
    return lines + [""]


def _held_out(evaluation: Optional[dict]) -> list[str]:
    lines = ["## Held-out loss", ""]
    if evaluation is None:
        return lines + ["Not measured: this run has no eval.json (`phi3e2e eval RUN` measures it).", ""]
    lines += [f"Mean next-token loss on {evaluation.get('eval_rows', '?')} held-out rows of the eval split "
              "(lower is better), base model vs fine-tuned, as phi3e2e's eval.json records it. The interval is a "
              "paired bootstrap over the rows.", "",
              "| model form | rows | base loss | fine-tuned loss | change | 95% interval of the change | verdict |",
              "|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for form, numbers in evaluation["losses"].items():
        try:
            low, high = numbers["change_interval_95"]
            lines.append(f"| {code(form)} | {int(numbers['rows'])} | {float(numbers['base']['loss']):.4f} "
                         f"| {float(numbers['fine_tuned']['loss']):.4f} | {float(numbers['change']):+.4f} "
                         f"| {float(low):+.4f} to {float(high):+.4f} | {code(numbers['verdict'])} |")  # fmt: skip
        except (KeyError, TypeError, ValueError):
            lines.append(f"| {code(form)} | (incomplete numbers in eval.json) | | | | | |")
    keeps = evaluation.get("int4_keeps")
    if isinstance(keeps, dict) and "int4_change" in keeps:
        share = "no gain to keep" if keeps.get("share") is None else f"{float(keeps['share']):.0%} of the gain"
        lines += ["", f"int4 vs merged on the first {keeps.get('rows')} rows: int4 change "
                  f"{float(keeps['int4_change']):+.4f}, merged change {float(keeps['merged_change']):+.4f}; "
                  f"the int4 build keeps {share}."]  # fmt: skip
    since = evaluation.get("dataset_since_training")
    if since:
        lines += ["", f"Eval data vs training: {code(since)}."]
    return lines + [""]


def _usage(record: runs.RunRecord, form: str, repo_id: str) -> list[str]:
    prompt = json.dumps(chat_prompt([], "What is LoRA?"))
    lines = ["## Use", ""]
    if form == "int4":
        lines += ["```python", "import onnxruntime_genai as og  # pip install onnxruntime-genai",
                  "from huggingface_hub import snapshot_download", "",
                  f"model = og.Model(snapshot_download({json.dumps(repo_id)}))", "tokenizer = og.Tokenizer(model)",
                  "params = og.GeneratorParams(model)", "params.set_search_options(max_length=512)",
                  "generator = og.Generator(model, params)",
                  f"generator.append_tokens(tokenizer.encode({prompt}))", "stream = tokenizer.create_stream()",
                  "while not generator.is_done():", "    generator.generate_next_token()",
                  "    print(stream.decode(generator.get_next_tokens()[0]), end='', flush=True)", "```"]  # fmt: skip
    elif form == "merged":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f"model = AutoModelForCausalLM.from_pretrained({json.dumps(repo_id)})",
                  f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(repo_id)})",
                  f"inputs = tokenizer({prompt}, return_tensors='pt')",
                  "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0]))", "```"]  # fmt: skip
    else:
        lines += ["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                  "", f"model = AutoPeftModelForCausalLM.from_pretrained({json.dumps(repo_id)})  # loads the base "
                  "model named in adapter_config.json",
                  "tokenizer = AutoTokenizer.from_pretrained(model.peft_config['default'].base_model_name_or_path)",
                  f"inputs = tokenizer({prompt}, return_tensors='pt')",
                  "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=128)[0]))", "```"]  # fmt: skip
    chat = f"phi3e2e chat --model {repo_id.split('/')[-1]}"
    if form == "adapter":
        chat += " --base BASE_MODEL_FOLDER"
    lines += ["", "With phi3e2e, after `hf download " + repo_id + " --local-dir " + repo_id.split("/")[-1] + "`:", "",
              "```bash", chat + ' --prompt "What is LoRA?"', "```"]  # fmt: skip
    return lines
