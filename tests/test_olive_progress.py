"""Reading Olive's output: pass boundaries, the loss history, and the real failure reason."""

import io

from phi3e2e.build.olive_runner import ProgressReader, StageLine

# Lines as Olive 0.13 + transformers print them (tqdm's carriage returns already split).
TRAINING = [
    "[2026-11-29 05:44:20,100] [INFO] [engine.py:665:_run_pass] Running pass finetune:lora",
    "Loading weights: 100%|██████████| 15/15 [00:00<00:00, 11866.19it/s]",
    "  0%|          | 0/20 [00:00<?, ?it/s]",
    "  2%|▏         | 1/20 [00:00<00:08,  7.12it/s]",
    "{'loss': '7.55', 'grad_norm': '0.5701', 'learning_rate': '0.003', 'epoch': '0.25'}",
    "{'loss': '7.1', 'grad_norm': '0.4', 'learning_rate': '0.003', 'epoch': '0.5'}",
    "100%|██████████| 2/2 [00:00<00:00, 50.1it/s]",
    "{'eval_loss': '7.2', 'eval_runtime': '0.1', 'epoch': '0.5'}",
    "{'loss': '6.9', 'grad_norm': '0.4', 'learning_rate': '0.003', 'epoch': '0.75'}",
    "{'loss': '6.5', 'grad_norm': '0.4', 'learning_rate': '0.003', 'epoch': '1'}",
    "{'train_runtime': '1.097', 'train_samples_per_second': '437.5', 'train_loss': '7.0', 'epoch': '1'}",
    "[2026-11-29 05:44:22,677] [INFO] [engine.py:733:_run_pass] Pass finetune:lora finished in 2.568160 seconds",
]


class Clock:
    """Olive's lines arrive one simulated second apart."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def feed_timed(reader, clock, lines):
    for line in lines:
        clock.now += 1.0
        reader.feed(line)


def test_loss_history_has_exact_steps_and_progress_is_shown():
    shown, clock = [], Clock()
    reader = ProgressReader(shown.append, logging_steps=5, line=StageLine(shown.append, every_s=3, clock=clock))
    feed_timed(reader, clock, TRAINING)
    assert [(e["step"], e["loss"]) for e in reader.history if "loss" in e] == [(5, 7.55), (10, 7.1), (15, 6.9), (20, 6.5)]
    assert [e["step"] for e in reader.history if "eval_loss" in e] == [10]
    assert shown[0] == "- fine-tune ..."
    assert shown[-1] == "  fine-tune done in 2.6s"
    assert not reader.produced_nothing and reader.last_error == ""
    # Not a terminal: a plain line every 3 (simulated) seconds, with step/total, loss, elapsed, rate, ETA.
    progress = [line for line in shown if line.startswith("  ") and "/20" in line and "eval" not in line]
    assert progress == [
        "  1/20  0:03  1.00/s  ETA 0:19",  # 1 step in the second since the first bar (0/20)
        "  15/20  loss 6.9000  0:08  2.50/s  ETA 0:02",  # 15 steps in 6 s; 5 left
    ]
    assert "  step 10/20  eval loss 7.2000" in shown


def test_on_a_terminal_each_stage_is_one_line_updated_in_place():
    shown, screen, clock = [], io.StringIO(), Clock()
    reader = ProgressReader(shown.append, logging_steps=5, line=StageLine(shown.append, live=screen, clock=clock))
    feed_timed(reader, clock, TRAINING)
    updates = screen.getvalue().split("\r\033[K")
    assert "  20/20  loss 6.5000  0:09  2.86/s  ETA 0:00" in updates
    assert updates[-1] == ""  # the live line is cleared before "done" is said
    assert not any("\n" in update for update in updates)  # updated in place, never a new line
    assert shown == ["- fine-tune ...", "  step 10/20  eval loss 7.2000", "  trained 20 steps in 1.1s",
                     "  fine-tune done in 2.6s"]  # fmt: skip


def test_the_int4_build_shows_what_it_is_doing():
    screen, clock = io.StringIO(), Clock()
    reader = ProgressReader(lambda _: None, logging_steps=5, line=StageLine(lambda _: None, live=screen, clock=clock))
    feed_timed(reader, clock, [
        "[2026-11-29 16:40:32,689] [INFO] [engine.py:665:_run_pass] Running pass int4:modelbuilder",
        "Reading layer 1",
        "Saving model.layers.0.input_layernorm.weight (f32, [64]):   2%|▏         | 1/43 [00:00<00:00, 665.87it/s]",
        "Saving cos_cache (f32, [4096,8]):  50%|▍         | 22/43 [00:00<00:00, 486.04it/s]",
    ])  # fmt: skip
    updates = screen.getvalue().split("\r\033[K")
    assert "  reading layer 1  0:01" in updates
    assert updates[-1] == "  22/43  saving  0:03  21/s  ETA 0:01"


def test_failure_reason_is_the_traceback_not_the_banner():
    reader = ProgressReader(lambda _: None, logging_steps=5)
    for line in [
        "[2026-11-29 05:57:25,558] [ERROR] [engine.py:728:_run_pass] Pass run failed.",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large",
        "[2026-11-29 05:57:25,566] [WARNING] [engine.py:237:run] No output model produced. Please check the log.",
    ]:
        reader.feed(line)
    assert reader.produced_nothing
    assert reader.last_error.startswith("safetensors._safetensors_rust.SafetensorError: Error while deserializing")


def _losses(epochs):
    return [f"{{'loss': '7.0', 'grad_norm': '0.5', 'learning_rate': '0.003', 'epoch': '{epoch}'}}" for epoch in epochs]


def test_an_eval_that_falls_between_loss_logs_gets_its_own_step():
    """Eval once an epoch of 14 steps, the loss logged every 5: the evals ran at steps 14 and 28, not at the
    last loss log (10, 25) nor twice at one step."""
    shown = []
    reader = ProgressReader(shown.append, logging_steps=5, line=StageLine(shown.append, every_s=1e9))
    lines = [TRAINING[0], "  0%|          | 0/30 [00:00<?, ?it/s]", *_losses(["0.3571", "0.7143"]),
             "{'eval_loss': '6.8', 'eval_runtime': '0.02', 'epoch': '1'}", *_losses(["1.071", "1.429", "1.786"]),
             "{'eval_loss': '6.4', 'eval_runtime': '0.02', 'epoch': '2'}"]  # fmt: skip
    for line in lines:
        reader.feed(line)
    assert [e["step"] for e in reader.history if "eval_loss" in e] == [14, 28]
    assert [e["step"] for e in reader.history if "loss" in e] == [5, 10, 15, 20, 25]
    assert "  step 14/30  eval loss 6.8000" in shown and "  step 28/30  eval loss 6.4000" in shown


def test_an_eval_before_the_first_loss_log_takes_the_training_bars_step():
    shown = []
    reader = ProgressReader(shown.append, logging_steps=10, line=StageLine(shown.append, every_s=1e9))
    for line in (TRAINING[0], "  0%|          | 0/30 [00:00<?, ?it/s]", " 10%|█         | 3/30 [00:01<00:09,  3.0it/s]",
                 "{'eval_loss': '7.1', 'eval_runtime': '0.02', 'epoch': '0.4286'}"):  # fmt: skip
        reader.feed(line)
    assert reader.history[-1]["step"] == 3 and "  step 3/30  eval loss 7.1000" in shown  # not step 0


def test_a_resumed_training_counts_on_from_its_checkpoint():
    shown = []
    reader = ProgressReader(shown.append, logging_steps=5, line=StageLine(shown.append, every_s=1e9), start_step=22)
    for line in (TRAINING[0], "  0%|          | 0/40 [00:00<?, ?it/s]", *_losses(["1.786", "2.143"]),
                 "{'train_runtime': '3.0', 'train_loss': '6.0', 'epoch': '2.857'}"):  # fmt: skip
        reader.feed(line)
    assert [e["step"] for e in reader.history if "loss" in e] == [25, 30]  # the multiples of 5 after 22
    assert "  trained 18 steps in 3.0s" in shown  # this attempt's: 22 -> 40
