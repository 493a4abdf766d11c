"""ModelBuilder reads the LM head from the model's LM head, not from any layer of the same width.

onnxruntime-genai 0.14.1's builder walks every module and takes any `nn.Linear` with `vocab_size`
outputs for the LM head (onnxruntime_genai/models/builders/base.py, `Model.has_lm_head`, line 4234).
When another projection has as many outputs as the vocabulary, the logits are wired to that layer's
input: the Phi-4-mini twin's MLP `gate_up_proj` has 2 x 1024 = 2048 outputs, its vocabulary 2048
tokens, so its ONNX builds answered from layer 0 (fp32 ONNX and PyTorch agreed on 0% of next tokens;
measured, tests/test_lm_head_fix.py). No real Phi model has such a collision (Phi-4-mini: 2 x 8192 =
16384 outputs vs 200064 tokens), but a fine-tune of any model whose widths collide would be thrown away.
With the patch, a Hugging Face model's own `get_output_embeddings()` is the LM head; other models
(GGUF) keep the stock check.
"""

from __future__ import annotations

from phi3e2e.build.builder_patch import patch, stock


def install() -> None:
    """Patch ModelBuilder in this process (idempotent)."""
    patch("has_lm_head", has_lm_head)


def has_lm_head(self, module) -> bool:
    import torch

    head = self.weights.get_output_embeddings() if hasattr(self.weights, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Linear):
        return module is head
    return stock(self, "has_lm_head")(module)
