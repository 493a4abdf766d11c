"""`phi3e2e sweep`: many fine-tunes over a search space, ranked by the held-out loss of their int4 models.

space    --set values -> fixed settings and dimensions; the grid; the next trial's values (Optuna)
record   gen-model/<sweep>.sweep.json, written whole or not at all
ranking  a trial's objective, the median rule that prunes, the ranked table and its plot
local    the trials on this machine, one after another, resumable
aml      one Azure ML sweep job for the whole search (a dry-run writes its YAML)

Each trial is an ordinary run, gen-model/<sweep>-t<k>/, whose run.json names its sweep and trial.
"""
