"""The Azure ML target: phi3e2e submits its own azure-ai-ml command job that runs `olive run`.

Olive 0.13 has no AzureML system any more, so this package does the Azure part: workspace and
credentials (workspace.py), job inputs from the model and data (sources.py), the small code
folder (staging.py) and what runs on the compute (compute_entry.py), the job YAML and entity
(job.py), submit (submit.py), status / log / download afterwards (results.py), and the
model and data assets it registers (registry.py).
Every module imports azure lazily, inside the functions that talk to it.
"""
