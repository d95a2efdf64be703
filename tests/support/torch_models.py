"""Small real architectures for the whole-model tests (imported only by tests that save)."""

from __future__ import annotations

import torch
from torch import nn


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)


class WithModuleList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.norm = nn.LayerNorm(4)


class NestedSequential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Sequential(nn.Linear(2, 3), nn.GELU()), nn.Sequential(nn.Linear(3, 2, bias=False))
        )


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Conv1d(width, width, 1)
        self.g = nn.GroupNorm(1, width)
        self.down = None


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({"first": Block(2), "second": Block(2)})
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("steps", torch.tensor(7))
        self.register_buffer("cache", torch.zeros(3), persistent=False)
        self.register_buffer("absent", None)
        self.notes = {"epochs": 3, "tags": ["a", "b"]}


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.decoder = nn.Linear(4, 10, bias=False)
        self.decoder.weight = self.embed.weight


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, num_layers=2)
        self.gru = nn.GRU(4, 2)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)
        for p in self.backbone.parameters():
            p.requires_grad_(False)


class Shared(nn.Module):
    """One child module registered under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(2, 2)
        self.right = self.left


def architectures() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "convbn": ConvBN(),
        "modulelist": WithModuleList(),
        "sequential": NestedSequential(),
        "custom": Custom(),
        "tied": Tied(),
        "recurrent": Recurrent(),
        "attention": Attention(),
        "frozen": Frozen(),
        "shared": Shared(),
        "dataparallel": nn.DataParallel(ConvBN()),
        "plain_sequential": nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)),
        "embedding_bag": nn.EmbeddingBag(5, 3),
    }


class Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)
        self.bn = nn.BatchNorm1d(3)
        self.seq = nn.Sequential(nn.Linear(3, 1), nn.ReLU())
        self.register_buffer("buf", torch.arange(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(self.bn(self.lin(x))) + self.buf.sum()
