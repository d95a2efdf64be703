"""Regenerate the bundled example checkpoints with real torch (run once; needs torch).

``civilnet.pth`` is the state dict of the small CNN from PyTorch's classic "neural networks"
tutorial (conv1, pool, conv2, fc1..fc3); ``civilnet_checkpoint.pth`` is the tutorial's
training-checkpoint pattern: epoch, model and optimizer state dicts, and the loss.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class CivilNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def main(out: Path = Path(__file__).parent) -> None:
    torch.manual_seed(0)
    net = CivilNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    torch.save(net.state_dict(), out / "civilnet.pth")
    torch.save(
        {
            "epoch": 5,
            "model_state_dict": net.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "loss": loss.item(),
        },
        out / "civilnet_checkpoint.pth",
    )
    print(f"wrote {out}/civilnet.pth and civilnet_checkpoint.pth with torch {torch.__version__}")


if __name__ == "__main__":
    main()
