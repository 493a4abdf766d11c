"""Reading Olive's output: pass boundaries, the loss history, and the real failure reason."""

from phi3e2e.train.olive_runner import ProgressReader

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


def test_loss_history_has_exact_steps_and_progress_is_shown():
    shown = []
    reader = ProgressReader(shown.append, logging_steps=5)
    for line in TRAINING:
        reader.feed(line)
    assert [(e["step"], e["loss"]) for e in reader.history if "loss" in e] == [(5, 7.55), (10, 7.1), (15, 6.9), (20, 6.5)]
    assert [e["step"] for e in reader.history if "eval_loss" in e] == [10]
    assert shown[0] == "- fine-tune ..."
    assert "  step 20/20  loss 6.5000" in shown
    assert shown[-1] == "  fine-tune done in 2.6s"
    assert not reader.produced_nothing and reader.last_error == ""


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
