"""Sharing a finished run: `phi3e2e push` uploads one model form with a model card to the Hugging Face Hub.

card  the model card (README.md) written from run.json and eval.json
hub   the upload: checks first, then one commit through huggingface_hub, recorded in run.json
"""
