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
from phi3e2e.evaluate.losses import mean_loss, onnx_row_nll, perplexity, torch_row_nll
from phi3e2e.evaluate.uncertainty import change_interval, kept_share, verdict
from phi3e2e.project import Project
from phi3e2e.storage import atomic_write

# What `eval --forms` calls each run-folder form it can measure. "int4" is the int4 form the run ships
# (onnx-int4/, or onnx-adapter/ for a run shipped as an adapter); "int4-adapter" its onnx-adapter/ beside it.
EVAL_FORMS = {"int4": runs.ONNX_INT4, "int4-adapter": runs.ONNX_ADAPTER, "merged": runs.MERGED, "adapter": runs.ADAPTER}
ONNX_EVAL_FORMS = ("int4", "int4-adapter")


@dataclass(frozen=True)
class EvalOptions:
    forms: tuple[str, ...] = ("int4",)
    samples: int = 3
    max_new_tokens: int = 64
    max_rows: Optional[int] = None  # None: every eval row
    merged_max_rows: Optional[int] = None  # the PyTorch forms on the first N rows only (a full-size model is slow)


# The int4 build should keep at least this share of the merged model's held-out gain (issue 20).
KEEP_AT_LEAST = 0.8


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
    row_nll: dict[str, dict[str, list[float]]] = {}
    for form in options.forms:
        rows = data.token_ids
        if form in ONNX_EVAL_FORMS:
            base_int4 = cached_base_int4(project.model_cache, base_model, recorded_int4_options(record), say)
            folder = runs.shipped_form(run_dir) if form == "int4" else EVAL_FORMS[form]
            if not (run_dir / folder).is_dir():
                raise UserError(f"{run_dir / folder}: missing; build it with "
                                f"`phi3e2e export {run_dir.name} --ship adapter`")
            models[form] = {"base": base_int4, "fine_tuned": run_dir / folder}
            measure = onnx_row_nll
        else:
            models[form] = {"base": base_model, "fine_tuned": run_dir / EVAL_FORMS[form]}
            measure = torch_row_nll
            rows = rows[: options.merged_max_rows] if options.merged_max_rows else rows
        losses[form], row_nll[form] = {"rows": len(rows)}, {}
        for which, model_dir in models[form].items():
            label = f"{form} {which.replace('_', '-')}"
            row_nll[form][which] = measure(model_dir, rows, base_model, progress=_progress(say, label, len(rows)))
            loss = mean_loss(row_nll[form][which], rows)
            # Project-relative like run.json's paths, so a copied project's eval.json stays true.
            losses[form][which] = {"loss": round(loss, 4), "perplexity": perplexity(loss), "model": project.relative(model_dir)}
            say(f"  {label:<18} loss {loss:.4f}" + (f"  ({len(rows)} rows)" if len(rows) < len(data.rows) else ""))
        change = round(losses[form]["fine_tuned"]["loss"] - losses[form]["base"]["loss"], 4)
        interval = change_interval(row_nll[form]["base"], row_nll[form]["fine_tuned"], [len(ids) - 1 for ids in rows])
        losses[form] |= {"change": change, "change_interval_95": interval, "verdict": verdict(change, interval, len(rows))}
    int4_keeps = _int4_keeps(losses, row_nll, data.token_ids)
    adapter_keeps = _int4_keeps(losses, row_nll, data.token_ids, "int4-adapter")

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
        "int4_keeps": int4_keeps,
        **({"int4_adapter_keeps": adapter_keeps} if adapter_keeps else {}),
        "samples": samples,
        "seconds": runs.elapsed(start),
    }
    # An interrupted eval keeps the old eval.json.
    atomic_write(run_dir / runs.EVAL_FILE, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_report(run_dir, result)
    return result


def _int4_keeps(losses: dict, row_nll: dict, token_ids: list[list[int]], form: str = "int4") -> Optional[dict]:
    """The share of the merged model's gain the int4 build keeps, on the rows both were measured on."""
    if form not in losses or "merged" not in losses:
        return None
    rows = losses["merged"]["rows"]
    int4 = {which: mean_loss(row_nll[form][which][:rows], token_ids[:rows]) for which in ("base", "fine_tuned")}
    int4_change = int4["fine_tuned"] - int4["base"]
    share = kept_share(int4_change, losses["merged"]["change"])
    return {"share": share, "rows": rows, "int4_change": round(int4_change, 4), "merged_change": losses["merged"]["change"],
            "enough": share is None or share >= KEEP_AT_LEAST}  # fmt: skip


# The closing eval measures the merged model beside the int4 one when the machine can: all rows for a small
# model, the first CAPPED_ROWS for a large one (Phi-3-mini in fp32: 15.3 GB of RAM, minutes), none when its fp32
# weights would not fit in the memory available (a laptop evaluating an Azure ML run of Phi-3-mini).
SMALL_MODEL_BYTES = 10**9
CAPPED_ROWS = 32


def closing_eval_options(run_dir: Path, samples: int, max_rows: int) -> tuple[EvalOptions, Optional[str]]:
    """The forms the closing eval measures on this machine, and a note when the merged form is left out."""
    from phi3e2e.machine import available_memory_bytes

    fp32_bytes = _fp32_bytes(run_dir / runs.MERGED)
    int4_only = EvalOptions(samples=samples, max_rows=max_rows)
    if fp32_bytes is None:
        return int4_only, None
    if fp32_bytes <= SMALL_MODEL_BYTES:
        return EvalOptions(("int4", "merged"), samples, max_rows=max_rows), None
    available = available_memory_bytes()
    if available is not None and available < 1.5 * fp32_bytes + SMALL_MODEL_BYTES:
        return int4_only, (f"merged model not measured: its fp32 weights take {fp32_bytes / 1e9:.1f} GB, "
                           f"{available / 1e9:.1f} GB of memory is free (on a bigger machine: "
                           f"phi3e2e eval {run_dir.name} --forms int4,merged)")  # fmt: skip
    return EvalOptions(("int4", "merged"), samples, max_rows=max_rows, merged_max_rows=CAPPED_ROWS), None


def _fp32_bytes(model_dir: Path) -> Optional[int]:
    """The weights' size in fp32 (as losses.py loads them); None: no such model."""
    stored = sum(path.stat().st_size for path in model_dir.glob("*.safetensors"))
    if not stored:
        return None
    try:
        dtype = json.loads((model_dir / "config.json").read_text()).get("torch_dtype") or "float32"
    except (OSError, ValueError):
        dtype = "float32"
    return stored * (2 if dtype in ("bfloat16", "float16") else 1)


def build_warning(result: dict, run_dir: Path, project: Project) -> Optional[str]:
    """One line when the int4 build keeps less than KEEP_AT_LEAST of the merged model's gain."""
    keeps = result.get("int4_keeps")
    if not keeps or keeps["enough"]:
        return None
    merged = project.relative(run_dir / runs.MERGED)
    return (f"warning: the int4 build keeps {keeps['share']:.0%} of the merged model's held-out gain (int4 "
            f"{keeps['int4_change']:+.3f}, merged {keeps['merged_change']:+.3f} on {keeps['rows']} rows): "
            f"chat with the merged form instead: phi3e2e chat --model {merged}")


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

    adapter = model_dir / runs.ADAPTER_FILE if (model_dir / runs.ADAPTER_FILE).is_file() else None
    try:
        model = og.Model(str(runs.adapter_base_dir(model_dir) if adapter else model_dir))
        tokenizer = og.Tokenizer(model)
        adapters = og.Adapters(model) if adapter else None
        if adapter:
            adapters.load(str(adapter), "fine_tuned")
    except Exception as e:  # a damaged model folder: the runtime's RuntimeError
        raise UserError(f"{model_dir}: cannot load the model ({str(e).splitlines()[0][:200]})") from None
    answers = []
    for prompt in prompts:
        prompt_ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt_ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        if adapters is not None:
            generator.set_active_adapter(adapters, "fine_tuned")
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
    """The few lines `eval` and `finetune` print after measuring."""
    lines = []
    for form, numbers in result["losses"].items():
        base, tuned = numbers["base"], numbers["fine_tuned"]
        low, high = numbers["change_interval_95"]
        lines.append(
            f"  {form:<7} held-out loss {base['loss']:.3f} -> {tuned['loss']:.3f} ({numbers['change']:+.3f}, 95% "
            f"interval {low:+.3f} to {high:+.3f}: {numbers['verdict']}); perplexity {base['perplexity']:g} -> "
            f"{tuned['perplexity']:g}"
        )
    return lines
