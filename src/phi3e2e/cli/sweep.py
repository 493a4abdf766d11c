"""`phi3e2e sweep`: fine-tune over a search space; trials ranked by the held-out loss of their int4 models."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from phi3e2e.cli.azure_options import (
    ComputeOption,
    ImageOption,
    InstanceTypeOption,
    LowPriorityOption,
    ResourceGroupOption,
    SubscriptionOption,
    TimeoutOption,
    WorkspaceOption,
    aml_options,
)  # fmt: skip
from phi3e2e.cli.finetune import AlgoOption, TargetOption
from phi3e2e.cli.options import ModelOption, VerboseOption, current_project, say
from phi3e2e.sweep.space import Search

SearchOption = Annotated[
    Optional[Search],
    typer.Option("--search", show_default=False,
                 help="grid (the default when every dimension is a list), random, or tpe (Optuna's TPE; "
                      "the default when a dimension is a range)."),
]  # fmt: skip


def sweep(
    set_values: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="A dimension (KEY=a,b,c or KEY=LOW..HIGH) or a setting "
                     "fixed for every trial (KEY=VALUE).", show_default=False),
    ] = None,
    trials: Annotated[
        Optional[int], typer.Option("--trials", help="Trials to run (grid: every point unless fewer).",
                                    show_default=False, min=1),
    ] = None,
    search: SearchOption = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Sweep name; trials are runs NAME-t1, NAME-t2, ...",
                                    show_default=False),
    ] = None,
    resume: Annotated[
        Optional[str], typer.Option("--resume", metavar="NAME", help="Continue an interrupted sweep.", show_default=False),
    ] = None,
    algo: AlgoOption = "lora",
    target: TargetOption = None,
    model: ModelOption = None,
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset name under datasets/ or folder; default: the prepared one.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="--target aml: write and check the sweep job only.")] = False,
    verbose: VerboseOption = False,
    compute: ComputeOption = None,
    instance_type: InstanceTypeOption = None,
    image: ImageOption = None,
    timeout: TimeoutOption = 48.0,
    low_priority: LowPriorityOption = False,
    subscription: SubscriptionOption = None,
    resource_group: ResourceGroupOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Fine-tune once per point of a search space; rank the trials by their int4 model's held-out loss.

    Every --set with a comma list (KEY=a,b,c) or a range (KEY=LOW..HIGH, random or tpe search;
    learning rates on a log scale) is a dimension; other --set values apply to every trial.
    Each trial is an ordinary run, gen-model/NAME-tK/ (chat, eval, serve take it); the sweep
    is recorded in gen-model/NAME.sweep.json. Ctrl-C stops the current trial; --resume goes on.

    Examples:

    \b
      phi3e2e sweep --set lora.r=8,16,64 \\
          --set training.learning_rate=1e-4,3e-4 --name r-lr
      phi3e2e runs --sweep r-lr
      phi3e2e sweep --resume r-lr
      phi3e2e sweep --set training.learning_rate=1e-5..1e-3 \\
          --set lora.r=8..64 --search tpe --trials 12
      phi3e2e sweep --set lora.r=8,16 --target aml --compute gpu-a100 --dry-run
    """
    from phi3e2e.errors import UserError

    project = current_project()
    if resume:
        given = [flag for flag, value in (("--set", set_values), ("--trials", trials), ("--search", search),
                 ("--name", name), ("--target", target), ("--model", model), ("--data", data),
                 ("--dry-run", dry_run)) if value]  # fmt: skip
        if given:
            raise UserError(f"--resume {resume} uses the sweep's own recorded settings: leave out {', '.join(given)}")
        from phi3e2e.sweep.start import resume as resume_sweep

        resume_sweep(project, resume, say, verbose)
        return
    from phi3e2e.sweep.start import sweep as start_sweep

    azure = None
    if target == "aml":
        azure = aml_options(compute, image, True, None, subscription, resource_group, workspace,
                            instance_type=instance_type, timeout_h=timeout, low_priority=low_priority)  # fmt: skip
    start_sweep(project, set_values or [], algo=algo, search=search, trials=trials, name=name, target=target,
                model=model, data=data, dry_run=dry_run, verbose=verbose, aml_options=azure, say=say)  # fmt: skip
