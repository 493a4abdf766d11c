"""The memory plan: a job that cannot fit its GPU or node is refused before anything is written or submitted.

The model's sizes are the published Phi configs (workflow/model_family.py); nothing is downloaded.
"""

from __future__ import annotations

import pytest

from phi3e2e.errors import UserError
from phi3e2e.train.aml import vm_sizes
from phi3e2e.train.aml.job import AmlOptions
from phi3e2e.train.aml.memory_plan import ModelShape, gpu_need, node_ram_need, usable
from phi3e2e.train.finetune import finetune
from phi3e2e.workflow.model_family import MEMBERS
from phi3e2e.workflow.settings import build_settings

PHI3_MINI = "microsoft/Phi-3-mini-4k-instruct"


def shape(name: str) -> ModelShape:
    return ModelShape.of(name, MEMBERS[name].config)


@pytest.mark.parametrize("name, billions", [("phi3-mini", 3.82), ("phi3-medium", 13.96), ("phi4-mini", 3.84)])
def test_parameter_counts_match_the_published_models(name, billions):
    assert shape(name).params / 1e9 == pytest.approx(billions, abs=0.01)


def test_lora_in_fp32_on_a_16_gib_gpu_does_not_fit_and_qlora_or_bf16_does():
    settings, model = build_settings("phi3-mini", {}), shape("phi3-mini")
    fp32 = gpu_need(model, settings, "lora", bf16=False)  # T4/V100: bfloat16 becomes fp16 -> loaded in fp32
    assert fp32.parts["weights"] == pytest.approx(3.82e9 * 4 / 2**30, rel=0.01) and fp32.total > usable(vm_sizes.T4)
    assert gpu_need(model, settings, "qlora", bf16=False).total < usable(vm_sizes.T4)
    assert gpu_need(model, settings, "lora", bf16=True).total < usable(vm_sizes.gpu_of("Standard_NV36ads_A10_v5"))


def test_activations_grow_with_length_and_batch_and_shrink_with_checkpointing():
    model = shape("phi3-mini")

    def activations(**changes):
        return gpu_need(model, build_settings("phi3-mini", changes), "qlora", bf16=True).parts["activations"]

    base = activations()
    assert activations(**{"data.max_length": 1024}) == pytest.approx(base / 2)
    assert activations(**{"training.per_device_train_batch_size": 4}) == pytest.approx(base * 4)
    assert activations(**{"training.gradient_checkpointing": False}) > 10 * base


def plan(project, algo="lora", size="Standard_NC4as_T4_v3", lines=None, **options):
    return finetune(project, algo=algo, target="aml", model=PHI3_MINI, dry_run=True, run_name="plan",
                    aml_options=AmlOptions(instance_type=size, **options),
                    say=(lines if lines is not None else []).append)  # fmt: skip


def test_lora_phi3_mini_on_a_t4_is_refused_naming_what_fits_and_nothing_is_written(tiny_project):
    with pytest.raises(UserError) as error:
        plan(tiny_project)
    message = str(error.value)
    assert message.startswith("--instance-type Standard_NC4as_T4_v3 (NVIDIA T4, 16 GiB): lora on ")
    assert "--algo qlora" in message and "--instance-type Standard_NV36ads_A10_v5" in message
    assert "\n" not in message and not (tiny_project.gen_model / "plan").exists()


def test_the_dry_run_prints_the_plan_of_a_job_that_fits(tiny_project):
    lines = []
    plan(tiny_project, algo="qlora", lines=lines)
    [line] = [line for line in lines if line.startswith("memory plan: ")]
    assert "qlora on Phi-3-mini-4k-instruct (3.82 B parameters" in line and "on NVIDIA T4" in line
    assert "node RAM about 10 GiB for the merge and int4 build of 28" in line


def test_ignore_memory_plan_turns_the_refusal_into_a_warning(tiny_project):
    lines = []
    result = plan(tiny_project, lines=lines, memory_check=False)
    assert result.dry_run and any(line.startswith("warning: --instance-type Standard_NC4as_T4_v3") and
                                  "--ignore-memory-plan: submitted anyway" in line for line in lines)  # fmt: skip


def test_a_14b_model_on_the_smallest_t4_node_is_refused_for_its_ram(tiny_project):
    assert node_ram_need(shape("phi3-medium")) > vm_sizes.node_ram_gib("Standard_NC4as_T4_v3")
    with pytest.raises(UserError) as error:
        finetune(tiny_project, algo="qlora", target="aml", model="microsoft/Phi-3-medium-4k-instruct", dry_run=True,
                 set_args=["data.max_length=512"], aml_options=AmlOptions(instance_type="Standard_NC4as_T4_v3"),
                 say=lambda _: None)  # fmt: skip
    assert "Standard_NC4as_T4_v3 has 28 GiB of RAM" in str(error.value) and "--instance-type Standard_NC8as_T4_v3" in str(error.value)


def test_a_model_whose_sizes_are_unknown_is_planned_without_a_refusal(tiny_project):
    lines = []
    finetune(tiny_project, algo="qlora", target="aml", model="someone/unknown-model", dry_run=True, run_name="x",
             aml_options=AmlOptions(instance_type="Standard_NC4as_T4_v3"), say=lines.append)  # fmt: skip
    assert any("sizes are not known here" in line for line in lines)


def test_an_azure_ml_sweep_is_planned_at_its_largest_settings(tiny_project):
    from phi3e2e.sweep.start import sweep

    def plan_sweep(lengths, name):
        return sweep(tiny_project, [f"data.max_length={lengths}"], algo="qlora", model="microsoft/Phi-4-mini-instruct",
                     name=name, target="aml", dry_run=True, say=lambda _: None,
                     aml_options=AmlOptions(instance_type="Standard_NV12ads_A10_v5"))  # fmt: skip

    assert plan_sweep("256,512", "fits").status == "dry-run"  # an 8 GiB A10 share holds it at 512 tokens ...
    with pytest.raises(UserError) as error:  # ... not at 2048: the first trial (512) alone would have passed
        plan_sweep("512,2048", "too-big")
    assert "qlora on Phi-4-mini-instruct needs about" in str(error.value)
