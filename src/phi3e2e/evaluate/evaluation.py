"""`phi3e2e eval`: did the fine-tune help? Held-out loss of base vs fine-tuned, plus sample answers.

The loss is measured on the dataset's eval split, tokenized exactly as the fine-tune saw it
(eval_data.py), on the int4 ONNX models users ship: the run's onnx-int4/ against the base
model built the same way (base_int4.py). On request also on the PyTorch forms: merged/ and
adapter/ (base + LoRA adapter), each against the PyTorch base model (losses.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from phi3e2e import runs
from phi3e2e.errors import UserError
from phi3e2e.evaluate.eval_data import load_eval_rows
from phi3e2e.evaluate.losses import onnx_loss, perplexity, torch_loss
from phi3e2e.project import Project
from phi3e2e.storage import atomic_write

# What `eval --forms` calls each run-folder form it can measure.
EVAL_FORMS = {"int4": runs.ONNX_INT4, "merged": runs.MERGED, "adapter": runs.ADAPTER}


@dataclass(frozen=True)
class EvalOptions:
    forms: tuple[str, ...] = ("int4",)
    samples: int = 3
    max_new_tokens: int = 64
    max_rows: Optional[int] = None  # None: every eval row


def evaluate_run(
    project: Project, run_dir: Path, options: EvalOptions = EvalOptions(), say: Callable[[str], None] = print
) -> dict:
    """Measure, then write eval.json, the plot and the Markdown report into the run folder."""
    from phi3e2e.build.base_int4 import cached_base_int4
    from phi3e2e.build.options import recorded_int4_options
    from phi3e2e.evaluate.report import write_report

    check_options(options)
    start = time.monotonic()
    record = runs.read_record(run_dir)
    base_model = project.resolve(record.base_model)
    if not base_model.is_dir():
        raise UserError(f"{base_model}: the run's base model is gone; run `phi3e2e prepare` again to restore it")
    dataset_dir = project.resolve(record.dataset)
    data = load_eval_rows(dataset_dir, base_model, record.settings.data, options.max_rows)
    n_tokens = sum(len(ids) - 1 for ids in data.token_ids)
    dataset_state = dataset_since_training(record, dataset_dir)
    say(f"Evaluating {run_dir.name} on {len(data.rows)} held-out rows ({n_tokens} tokens) of {record.dataset} ...")
    if dataset_state != "as trained":
        say(f"  note: {record.dataset}: {dataset_state}")

    losses: dict[str, dict] = {}
    models: dict[str, dict] = {}
    for form in options.forms:
        if form == "int4":
            base_int4 = cached_base_int4(project.model_cache, base_model, recorded_int4_options(record), say)
            models[form] = {"base": base_int4, "fine_tuned": run_dir / EVAL_FORMS[form]}
            measure = onnx_loss
        else:
            models[form] = {"base": base_model, "fine_tuned": run_dir / EVAL_FORMS[form]}
            measure = torch_loss
        losses[form] = {}
        for which, model_dir in models[form].items():
            label = f"{form} {which.replace('_', '-')}"
            loss = measure(model_dir, data.token_ids, base_model, progress=_progress(say, label, len(data.rows)))
            # Project-relative like run.json's paths, so a copied project's eval.json stays true.
            losses[form][which] = {"loss": round(loss, 4), "perplexity": perplexity(loss), "model": project.relative(model_dir)}
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
        "dataset": record.dataset,
        "dataset_sha256": runs.data_fingerprint(dataset_dir),
        "dataset_since_training": dataset_state,
        "eval_rows": len(data.rows),
        "eval_tokens": n_tokens,
        "max_length": record.settings.data.max_length,
        "losses": losses,
        "samples": samples,
        "seconds": runs.elapsed(start),
    }
    # An interrupted eval keeps the old eval.json.
    atomic_write(run_dir / runs.EVAL_FILE, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_report(run_dir, result)
    return result


def check_options(options: EvalOptions) -> None:
    unknown = [form for form in options.forms if form not in EVAL_FORMS]
    if unknown or not options.forms:
        raise UserError(f"--forms {','.join(unknown) or repr('')}: choose from {', '.join(EVAL_FORMS)}")
    if options.max_rows is not None and options.max_rows < 1:
        raise UserError(f"--max-rows {options.max_rows}: must be at least 1 (leave it out for every eval row)")
    if options.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {options.max_new_tokens}: must be at least 1")


def dataset_since_training(record: runs.RunRecord, dataset_dir: Path) -> str:
    """"as trained", or what differs from the files the run was trained on (run.json's sha256)."""
    if not record.data_sha256:
        return "not fingerprinted when this run trained (older phi3e2e): cannot tell if it changed since"
    now = runs.data_fingerprint(dataset_dir)
    splits = sorted(set(record.data_sha256) | set(now))
    changed = [split for split in splits if record.data_sha256.get(split) != now.get(split)]
    if not changed:
        return "as trained"
    return f"changed since training ({', '.join(changed)} differ from run.json's sha256): measured on the current files"


def greedy_answers(model_dir: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of full prompt strings with ONNX Runtime GenAI (as `chat` runs it)."""
    import onnxruntime_genai as og

    try:
        model = og.Model(str(model_dir))
        tokenizer = og.Tokenizer(model)
    except Exception as e:  # a damaged model folder: the runtime's RuntimeError
        raise UserError(f"{model_dir}: cannot load the model ({str(e).splitlines()[0][:200]})") from None
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
        # Never decode an empty array: onnxruntime-genai 0.14.1 dies of SIGFPE on it (a model that
        # ends its turn at once, common after a short fine-tune).
        answers.append(tokenizer.decode(new_tokens).strip() if len(new_tokens) else "")
    return answers


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
