"""Replacing one method of onnxruntime-genai's ModelBuilder (`builder.Model`), keeping the stock one callable."""

from __future__ import annotations

from typing import Callable


def patch(method: str, replacement: Callable) -> None:
    """`builder.Model.<method> = replacement` in this process, once (idempotent)."""
    import onnxruntime_genai.models.builder as builder  # puts its builders/ folder on sys.path

    model_class = builder.Model
    if not hasattr(model_class, _stock_name(method)):
        setattr(model_class, _stock_name(method), getattr(model_class, method))
        setattr(model_class, method, replacement)


def stock(model, method: str) -> Callable:
    """The unpatched `method`, bound to `model`."""
    return getattr(type(model), _stock_name(method)).__get__(model)


def _stock_name(method: str) -> str:
    return f"_phi3e2e_stock_{method}"
