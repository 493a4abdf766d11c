"""Did the fine-tune help? Held-out losses of base vs fine-tuned, sample answers, a report."""
