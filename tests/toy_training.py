"""A toy regression problem for the training-loop tests; also run under torchrun by the two-process test."""

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from survgen.training.configs import TrainConfig
from survgen.training.loop import train


class ToyData(Dataset):
    def __init__(self, n=37, dim=5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "index": torch.tensor(i)}


class ToyModel(nn.Module):
    """A trained head on a frozen random feature layer."""

    def __init__(self, dim=5):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Linear(dim, 16).requires_grad_(False)
        self.head = nn.Linear(16, 1)
        self.seen = []

    def trainable(self):
        return {f"head.{n}": p for n, p in self.head.named_parameters()}


def toy_loss(model, batch, generator):
    model.seen.append(batch["index"].tolist())
    # input noise from the loop's generator: resumption must reproduce it exactly
    x = batch["x"] + 0.01 * torch.randn(batch["x"].shape, generator=generator)
    return nn.functional.mse_loss(model.head(torch.tanh(model.features(x))), batch["y"])


def run(run_dir, resume=False, loss_fn=toy_loss, on_sample=None, **config):
    model = ToyModel()
    cfg = TrainConfig(**{"steps": 8, "batch_size": 4, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 3,
                         "sample_every": 1000, "log_every": 1, "num_workers": 0, **config})
    result = train(run_dir=run_dir, model=model, trainable=model.trainable(), dataset=ToyData(), loss_fn=loss_fn,
                   config=cfg, on_sample=on_sample, resume=resume)
    return model, result


if __name__ == "__main__":  # torchrun --nproc_per_node 2 tests/toy_training.py RUN_DIR OUT_DIR
    import torch.distributed as dist

    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    model, result = run(run_dir, steps=5, grad_accum=2)
    rank = dist.get_rank()
    torch.save({"head": model.head.state_dict(), "seen": model.seen, "losses": result.losses},
               out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()
