"""Random-weight face-parsing checkpoints for tests (no download).

For other engineers' tests:
    path = save_random_bisenet(tmp_path / "79999_iter.pth", seed=0)   # then worker.models.bisenet.load_bisenet(path)

The file is a plain state dict in the key layout of the public `79999_iter.pth`
(zllrunning/face-parsing.PyTorch). That layout fixes every tensor's shape, so the file has the
real one's size (about 53 MB): write it under a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from worker.models.bisenet import BiSeNet


def random_bisenet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A BiSeNet state dict with random weights and random (valid) BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    model = BiSeNet()
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(79999)
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.dim() > 1:  # convolution kernels, He-scaled so activations stay in range
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            else:  # BatchNorm scale (around 1), shift and running mean (around 0)
                centre = 1.0 if name.endswith(".weight") else 0.0
                tensor.copy_(centre + 0.1 * torch.randn(tensor.shape, generator=generator))
    return state


def save_random_bisenet(path: str | Path, seed: int = 0) -> Path:
    """Write `random_bisenet_state_dict(seed)` with torch.save; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_bisenet_state_dict(seed), path)
    return path
