"""`phi3e2e eval`: did the fine-tune help? Held-out loss of base vs fine-tuned, plus sample answers.

The loss is measured on the dataset's eval split, tokenized exactly as the fine-tune saw it
(training_text), on the int4 ONNX models users ship: the run's onnx-int4/ against the base
model built the same way (base_int4). On request also on the PyTorch forms: merged/ and
adapter/ (base + LoRA adapter), each against the PyTorch base model.

Loss = total next-token negative log-likelihood / number of predicted tokens, over all eval
rows; perplexity = exp(loss).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.project import Project

FORMS = ("int4", "merged", "adapter")
EVAL_FILE, REPORT_FILE = "eval.json", "eval-report.md"


@dataclass(frozen=True)
class EvalOptions:
    forms: tuple[str, ...] = ("int4",)
    samples: int = 3
    max_new_tokens: int = 64
    max_rows: Optional[int] = None  # None: every eval row


@dataclass
class EvalRows:
    rows: list[dict]
    token_ids: list[list[int]]
    prompts: list[tuple[str, str, str]]  # (question, full prompt text, reference answer) for the samples


def evaluate_run(
    project: Project, run_dir: Path, options: EvalOptions = EvalOptions(), say: Callable[[str], None] = print
) -> dict:
    """Measure, then write eval.json, the plot and the Markdown report into the run folder."""
    from phi3e2e.evaluate.base_int4 import cached_base_int4, int4_options
    from phi3e2e.evaluate.report import write_report

    unknown = [form for form in options.forms if form not in FORMS]
    if unknown:
        raise UserError(f"--forms {','.join(unknown)}: choose from {', '.join(FORMS)}")
    start = time.monotonic()
    record = runs.read_run_record(run_dir)
    base_model = project.resolve(record["base_model"])
    if not base_model.is_dir():
        raise UserError(f"{base_model}: the run's base model is gone; run `phi3e2e prepare` again to restore it")
    data = load_eval_rows(project.resolve(record["dataset"]), base_model, record["settings"]["data"], options)
    n_tokens = sum(len(ids) - 1 for ids in data.token_ids)
    say(f"Evaluating {run_dir.name} on {len(data.rows)} held-out rows ({n_tokens} tokens) ...")

    losses: dict[str, dict] = {}
    models: dict[str, dict] = {}
    for form in options.forms:
        if form == "int4":
            base_int4 = cached_base_int4(project.model_cache, base_model, int4_options(run_dir, record), say)
            models[form] = {"base": base_int4, "fine_tuned": run_dir / "onnx-int4"}
            measure = onnx_loss
        else:
            models[form] = {"base": base_model, "fine_tuned": run_dir / form}
            measure = torch_loss
        losses[form] = {}
        for which, model_dir in models[form].items():
            label = f"{form} {which.replace('_', '-')}"
            loss = measure(model_dir, data.token_ids, base_model, progress=_progress(say, label, len(data.rows)))
            losses[form][which] = {"loss": round(loss, 4), "perplexity": _perplexity(loss), "model": str(model_dir)}
            say(f"  {label:<18} loss {loss:.4f}")
        losses[form]["change"] = round(losses[form]["fine_tuned"]["loss"] - losses[form]["base"]["loss"], 4)

    samples = []
    if options.samples and "int4" in models:
        picked = data.prompts[: options.samples]
        say(f"Answering {len(picked)} eval questions with both int4 models (greedy) ...")
        answers = {
            which: greedy_answers(model_dir, [prompt for _, prompt, _ in picked], options.max_new_tokens)
            for which, model_dir in models["int4"].items()
        }
        samples = [
            {
                "question": question,
                "prompt": prompt,
                "reference": reference,
                "base": answers["base"][i],
                "fine_tuned": answers["fine_tuned"][i],
            }
            for i, (question, prompt, reference) in enumerate(picked)
        ]

    result = {
        "run": run_dir.name,
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": record["dataset"],
        "eval_rows": len(data.rows),
        "eval_tokens": n_tokens,
        "max_length": record["settings"]["data"]["max_length"],
        "losses": losses,
        "samples": samples,
        "seconds": runs.elapsed(start),
    }
    (run_dir / EVAL_FILE).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_report(run_dir, result)
    return result


def load_eval_rows(dataset_dir: Path, base_model: Path, data_settings: dict, options: EvalOptions) -> EvalRows:
    from phi3e2e.chat_format import chat_prompt, last_user_turn, split_prompt
    from phi3e2e.workflow.training_text import load_tokenizer, render, training_token_ids

    eval_file = dataset_dir / "eval.jsonl"
    if not eval_file.is_file() or eval_file.stat().st_size == 0:
        raise UserError(
            f"{eval_file}: no eval split to measure on; import the data with `phi3e2e prepare --data FILE --eval-split 0.1`"
        )
    with open(eval_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = rows[: options.max_rows] if options.max_rows else rows
    template = data_settings["text_template"]
    tokenizer = load_tokenizer(base_model)
    token_ids, prompts = [], []
    for lineno, row in enumerate(rows, 1):
        try:
            text = render(template, row)
        except KeyError as e:
            raise UserError(f"{eval_file}:{lineno}: the run's text template needs column {e}") from None
        token_ids.append(training_token_ids(tokenizer, text, data_settings["max_length"]))
        if "Question" in row and "Best Answer" in row:
            question = str(row["Question"])
            prompts.append((question, chat_prompt([], question), str(row["Best Answer"])))
        else:
            prompt, reference = split_prompt(text)
            prompts.append((last_user_turn(prompt), prompt, reference))
    return EvalRows(rows, token_ids, prompts)


def onnx_loss(model_dir: Path, token_ids: list[list[int]], base_model: Path, progress=lambda i: None) -> float:
    """Full-sequence logits from the decoder ONNX graph, fed an empty KV cache."""
    import numpy as np
    import onnxruntime as ort

    config = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    session = ort.InferenceSession(str(model_dir / config["filename"]), providers=providers)
    dtypes = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
    }
    total_nll, total_tokens = 0.0, 0
    for i, ids in enumerate(token_ids):
        length = len(ids)
        feed = {}
        for spec in session.get_inputs():
            if spec.name == "input_ids":
                feed[spec.name] = np.array([ids], dtype=dtypes[spec.type])
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones((1, length), dtype=dtypes[spec.type])
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(length, dtype=dtypes[spec.type])[None, :]
            else:  # past key/values: batch 1, no past tokens yet
                shape = [dim if isinstance(dim, int) else (1 if "batch" in dim else 0) for dim in spec.shape]
                feed[spec.name] = np.zeros(shape, dtype=dtypes[spec.type])
        logits = session.run(["logits"], feed)[0][0, :-1].astype(np.float64)
        targets = np.array(ids[1:])
        peak = logits.max(axis=-1)
        log_norm = np.log(np.exp(logits - peak[:, None]).sum(axis=-1)) + peak
        total_nll += float((log_norm - logits[np.arange(length - 1), targets]).sum())
        total_tokens += length - 1
        progress(i + 1)
    return total_nll / total_tokens


def torch_loss(model_dir: Path, token_ids: list[list[int]], base_model: Path, progress=lambda i: None) -> float:
    """The same loss on a PyTorch form: a model folder, or an adapter folder on top of the base."""
    import warnings

    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a weight-loading bar per model is noise here
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32), model_dir
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for i, ids in enumerate(token_ids):
            input_ids = torch.tensor([ids])
            mean_nll = model(input_ids=input_ids, labels=input_ids).loss.item()
            total_nll += mean_nll * (len(ids) - 1)
            total_tokens += len(ids) - 1
            progress(i + 1)
    return total_nll / total_tokens


def greedy_answers(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of full prompt strings with ONNX Runtime GenAI (as `chat` runs it)."""
    import onnxruntime_genai as og

    model = og.Model(str(model_dir))
    tokenizer = og.Tokenizer(model)
    answers = []
    for prompt in prompts:
        prompt_ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt_ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt_ids)
        while not generator.is_done():
            generator.generate_next_token()
        new_tokens = generator.get_sequence(0)[len(prompt_ids) :]
        answers.append(tokenizer.decode(new_tokens).strip())
    return answers


def _perplexity(loss: float) -> float:
    return round(math.exp(loss), 2) if loss < 50 else float("inf")


def _progress(say: Callable[[str], None], label: str, total: int):
    """A line every quarter of the way for long evaluations; silent for short ones."""
    marks = {max(1, round(total * q)) for q in (0.25, 0.5, 0.75)} if total >= 40 else set()

    def report(done: int) -> None:
        if done in marks:
            say(f"  {label}: {done}/{total} rows")

    return report


def summary_lines(result: dict) -> list[str]:
    """The few lines `eval` and `finetune` print."""
    lines = []
    for form, numbers in result["losses"].items():
        base, tuned = numbers["base"], numbers["fine_tuned"]
        verdict = "better" if numbers["change"] < 0 else "not better"
        lines.append(
            f"  {form:<7} held-out loss {base['loss']:.3f} -> {tuned['loss']:.3f} ({numbers['change']:+.3f}, {verdict}); "
            f"perplexity {base['perplexity']:g} -> {tuned['perplexity']:g}"
        )
    return lines
