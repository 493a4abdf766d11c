"""phi3e2e: from a Q&A dataset to a fine-tuned int4 Phi-3 that answers on a laptop."""

__version__ = "0.1.0"
