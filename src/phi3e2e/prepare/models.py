"""Get a base model into model-cache/: from the Hugging Face Hub, a local folder, or made tiny."""

from __future__ import annotations

import json
from pathlib import Path

from phi3e2e.errors import UserError

DEFAULT_MODEL = "microsoft/Phi-3-mini-4k-instruct"
TINY_MODEL_DIR = "tiny-phi3"
TINY_MARKER = "phi3e2e-tiny.json"

# What the pipeline reads from a Phi-3 repo: config, safetensors weights, tokenizer, and the
# remote code some revisions still reference. Skipped: *.bin/*.pth duplicates, ONNX, GGUF, images.
HUB_FILES = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.py",
    "*.jinja",
    "*.txt",
    "LICENSE*",
]
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def looks_like_local_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists()


def check_model_folder(folder: Path) -> None:
    """A Hugging Face causal-LM folder the pipeline can use, or a one-line reason why not."""
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json or tokenizer.model)")
    if missing:
        raise UserError(f"{folder}: not a usable Hugging Face model folder, missing {', '.join(missing)}")
    try:
        json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{folder / 'config.json'}:{e.lineno}: invalid JSON: {e.msg}") from None


def is_tiny_model(folder: Path) -> bool:
    return (folder / TINY_MARKER).is_file()


def download_model(repo_id: str, model_cache: Path, revision: str | None = None) -> Path:
    """Download `repo_id` into model-cache/<name>. Resumes an interrupted download.

    The token comes from HF_TOKEN or the stored `hf auth login`, read by huggingface_hub itself;
    phi3e2e never writes it anywhere.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    target = model_cache / repo_id.split("/")[-1]
    try:
        snapshot_download(repo_id, revision=revision, local_dir=target, allow_patterns=HUB_FILES)
    except GatedRepoError:
        raise UserError(f"{repo_id}: gated model; accept its licence on the Hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such model on the Hub (or it is private: set HF_TOKEN)") from None
    except HfHubHTTPError as e:
        raise UserError(f"{repo_id}: download failed: {str(e).splitlines()[0]}") from None
    except OSError as e:
        reason = str(e).splitlines()[0].removeprefix("Got: ")
        raise UserError(f"{repo_id}: download failed ({reason}); run prepare again to resume") from None
    check_model_folder(target)
    return target
