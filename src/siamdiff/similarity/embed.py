"""Embedding many images in batches, without gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 1024,
          device: torch.device | str | None = None) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of uint8 images ``(N, C, H, W)``; the model is put in eval mode."""
    was_training = model.training
    if was_training:  # eval() walks every module: a visible cost when scoring one pair
        model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = [model(images[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(images), batch_size)]
    if was_training:
        model.train()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()
