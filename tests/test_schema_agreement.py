"""phi3e2e's schema (workflow/settings.py, workflow/olive_schema.py) and Olive 0.13's own validation accept
and refuse the same workflows, so a mistake fails at phi3e2e's dry-run, not after an Azure ML image build.

Olive's side is what `olive run` does before running a pass: RunConfig.parse_file_or_obj, then each
pass's generate_config and validate_config for the workflow's accelerator. Where phi3e2e refuses what
Olive's validation lets through (the value would only fail later, inside transformers or peft, or is
outside what phi3e2e supports), STRICTER says why; every other case must agree.
"""

from __future__ import annotations

import copy
import logging

import pytest

from phi3e2e.errors import UserError
from phi3e2e.workflow.olive_schema import validate_workflow
from phi3e2e.workflow.render import WorkflowPaths, render_workflow
from phi3e2e.workflow.settings import build_settings, parse_override

# --set variants Olive's validation lets through but phi3e2e refuses on purpose: why.
STRICTER = {
    "lora.r=0": "peft refuses r=0 when the pass starts",
    "lora.target_modules=[]": "an empty list makes Olive pick modules itself, not what the user wrote",
    "lora.dropout=1": "dropout 1 drops every LoRA activation: nothing trains",
    "training.learning_rate=0": "nothing trains",
    "training.max_steps=-2": "transformers: max_steps must be -1 or positive",
    "training.warmup_ratio=1.5": "transformers refuses a warmup ratio outside [0, 1]",
    "training.per_device_train_batch_size=0": "the trainer's data loader refuses 0",
    "training.gradient_accumulation_steps=0": "the trainer divides by it",
    "training.num_train_epochs=0": "nothing trains",
    "training.logging_steps=0": "transformers refuses 0 with logging_strategy steps",
    "training.save_steps=0": "transformers refuses 0 with save_strategy steps",
    "training.max_grad_norm=0": "clips every gradient to zero",
    "training.lr_scheduler_type=polynomial": "phi3e2e offers the schedules it documents and tests",
    "training.eval_strategy=no": "phi3e2e always measures the held-out loss while training when there is an eval split",
    "data.max_length=0": "every example would be cut to nothing",
    "qlora.quant_type=int8": "bitsandbytes 4-bit takes nf4 or fp4 only",
    "export.int4_op_types_to_quantize=[Gemm]": "the Phi-3 graph ModelBuilder writes has no Gemm to quantize",
}
BOTH_ACCEPT = [
    "lora.r=16", "lora.alpha=0.5", "lora.dropout=0", "lora.target_modules=[qkv_proj]",
    "training.torch_dtype=float16", "training.max_steps=5", "training.eval_strategy=steps",
    "training.lr_scheduler_type=cosine", "training.save_steps=7", "training.eval_steps=3", "training.eval_max_rows=5",
    "qlora.quant_type=fp4",
    "qlora.compute_dtype=float16", "export.int4_block_size=16", "export.int4_accuracy_level=1",
    "export.int4_accuracy_level=4", "export.int4_is_symmetric=false", "export.int4_op_types_to_quantize=[MatMul,Gather]",
]  # fmt: skip
BOTH_REFUSE = ["export.int4_accuracy_level=0", "export.int4_block_size=48", "export.int4_accuracy_level=5"]

# Where each setting lands in the rendered workflow, to hand Olive a value phi3e2e's settings refuse.
WORKFLOW_PLACE = {
    "lora.r": ("finetune", "r"), "lora.alpha": ("finetune", "alpha"), "lora.dropout": ("finetune", "lora_dropout"),
    "lora.target_modules": ("finetune", "target_modules"), "qlora.quant_type": ("finetune", "quant_type"),
    "qlora.compute_dtype": ("finetune", "compute_dtype"), "data.max_length": ("data", "max_seq_len"),
}  # fmt: skip


@pytest.fixture(scope="module")
def paths(tiny_template):
    return WorkflowPaths(
        model=str(tiny_template.model_cache / "tiny-phi3"), train_file="train.jsonl", eval_file="eval.jsonl",
        output="olive-output", cache=".olive-cache", checkpoints=".checkpoints",
    )  # fmt: skip


def olive_refusal(config: dict):
    """Olive's own validation of a workflow, as `olive run` does it before the passes run; None: accepted."""
    from olive.hardware.accelerator import AcceleratorSpec
    from olive.package_config import OlivePackageConfig
    from olive.workflows.run.config import RunConfig

    logging.getLogger("olive").setLevel(logging.ERROR)
    try:
        run_config = RunConfig.parse_file_or_obj(copy.deepcopy(config))
        package = OlivePackageConfig.load_default_config()
        accelerator = config["systems"][config["host"]]["accelerators"][0]
        spec = AcceleratorSpec(accelerator["device"], accelerator["execution_providers"][0])
        for name, (pass_config, *_) in run_config.passes.items():
            pass_class = package.import_pass_module(pass_config.type)
            if not pass_class.validate_config(pass_class.generate_config(spec, pass_config.config, {}, True), spec):
                return f"passes.{name}: pruned as invalid"
    except Exception as e:  # pydantic's ValidationError, or Olive's ValueError / AssertionError
        return " ".join(str(e).split())[:300] or type(e).__name__
    return None


def with_value(config: dict, key: str, value) -> dict:
    """The rendered workflow with `key` set to `value` directly, bypassing phi3e2e's settings."""
    config = copy.deepcopy(config)
    section, field = WORKFLOW_PLACE.get(key, (key.split(".")[0], key.split(".")[1]))
    if section == "finetune":
        config["passes"]["finetune"][field] = value
    elif section == "data":
        for data in config["data_configs"]:
            data["pre_process_data_config"][field] = value
    elif section == "export":
        config["passes"]["int4"][field] = value
    else:
        config["passes"]["finetune"]["training_args"][field] = value
    return config


def verdicts(set_arg: str, algo: str, paths: WorkflowPaths):
    """(phi3e2e's refusal or None, Olive's refusal or None) for one --set."""
    key, value = parse_override(set_arg)
    try:
        config = render_workflow(algo, True, build_settings("tiny", {key: value}), paths).config
        ours = None
    except UserError as e:
        ours = str(e)
        config = with_value(render_workflow(algo, True, build_settings("tiny", {}), paths).config, key, value)
    return ours, olive_refusal(config)


@pytest.mark.parametrize("set_arg", BOTH_ACCEPT)
def test_both_accept(set_arg, paths):
    algo = "qlora" if set_arg.startswith("qlora.") else "lora"
    assert verdicts(set_arg, algo, paths) == (None, None)


@pytest.mark.parametrize("set_arg", BOTH_REFUSE)
def test_both_refuse(set_arg, paths):
    ours, olive = verdicts(set_arg, "lora", paths)
    assert ours and olive, (ours, olive)
    assert set_arg.split("=")[0] in ours and "\n" not in ours  # phi3e2e's refusal names the setting, in one line


@pytest.mark.parametrize("set_arg", sorted(STRICTER))
def test_phi3e2e_is_stricter_on_purpose(set_arg, paths):
    algo = "qlora" if set_arg.startswith("qlora.") else "lora"
    ours, olive = verdicts(set_arg, algo, paths)
    assert ours and olive is None, f"no longer stricter ({STRICTER[set_arg]}): phi3e2e {ours!r}, Olive {olive!r}"


def test_duplicate_data_config_names_are_refused_by_both(paths):
    config = render_workflow("lora", True, build_settings("tiny", {}), paths).config
    config["data_configs"][1]["name"] = config["data_configs"][0]["name"]
    assert olive_refusal(config) and "duplicated" in olive_refusal(config)
    with pytest.raises(UserError, match="data_configs: name 'train_data' is used more than once"):
        validate_workflow(config, "olive-config.json")


@pytest.mark.parametrize(
    "change, why",
    [
        (lambda c: c["passes"]["int4"].update(extra_options={"int4_algo_config": "k_quant"}), "phi3e2e's settings name each int4 option"),
        (lambda c: c["data_configs"][0]["load_dataset_config"].update(split="train[:90%]"), "prepare writes the splits"),
        (lambda c: c["data_configs"][0]["load_dataset_config"].update(data_name="csv"), "datasets are JSON Lines"),
    ],
)  # fmt: skip
def test_workflow_edits_olive_takes_and_phi3e2e_refuses_on_purpose(change, why, paths):
    config = render_workflow("lora", True, build_settings("tiny", {}), paths).config
    change(config)
    assert olive_refusal(config) is None, why
    with pytest.raises(UserError):
        validate_workflow(config, "olive-config.json")


def test_dry_run_refuses_accuracy_level_0(tiny_project):
    from phi3e2e.train.aml.job import AmlOptions
    from phi3e2e.train.finetune import finetune

    with pytest.raises(UserError, match=r"export.int4_accuracy_level=0: Input should be 1, 2, 3 or 4"):
        finetune(tiny_project, algo="qlora", target="aml", dry_run=True, set_args=["export.int4_accuracy_level=0"],
                 aml_options=AmlOptions(compute="gpu-a100"), say=lambda _: None)  # fmt: skip
    assert not any(tiny_project.gen_model.iterdir()) if tiny_project.gen_model.exists() else True


def test_evaluation_every_n_steps_on_a_capped_split_is_valid_for_olive(paths):
    settings = build_settings("tiny", {"training.eval_strategy": "steps", "training.eval_steps": 3,
                                       "training.eval_max_rows": 5})  # fmt: skip
    config = render_workflow("lora", False, settings, paths).config
    args = config["passes"]["finetune"]["training_args"]
    assert (args["eval_strategy"], args["eval_steps"]) == ("steps", 3)
    assert [data["pre_process_data_config"].get("max_samples") for data in config["data_configs"]] == [None, 5]
    assert olive_refusal(config) is None
