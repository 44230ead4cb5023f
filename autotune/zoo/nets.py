"""The zoo's networks, defined in plain torch (torchvision is not needed, nor available here)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(*_conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True),
                                  *_conv_bn(width, cout, 3))
        self.skip = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        nn.Module.__init__(self)
        cout = width * self.expansion
        self.body = nn.Sequential(*_conv_bn(cin, width, 1), nn.ReLU(inplace=True),
                                  *_conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
                                  *_conv_bn(width, cout, 1))
        self.skip = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                     if stride != 1 or cin != cout else nn.Identity())


class ResNet(nn.Module):
    """ResNet-18/50 as in He et al. 2016, with a 10-class head."""

    def __init__(self, block: type[BasicBlock], depths: list[int], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        cin = 64
        for i, depth in enumerate(depths):
            width = 64 * 2**i
            for j in range(depth):
                layers.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width 1.0, with a 10-class head."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True)]
        cin = 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class DigitsCNN(nn.Module):
    """A small CNN for 1x28x28 digit images."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class EncoderLayer(nn.Module):
    """A post-norm BERT layer with attention written out in MatMul/Softmax, as exporters emit it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, hd = self.heads, d // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, h, hd).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        ctx = (attn @ v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.out(ctx))
        return self.norm2(x + self.ff2(F.gelu(self.ff1(x))))


class TransformerEncoder(nn.Module):
    """A small BERT-style encoder over 64 patch tokens of 4 features each."""

    def __init__(self, tokens: int = 64, features: int = 4, dim: int = 128, heads: int = 4,
                 depth: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads) for _ in range(depth)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, tokens, features)
        return self.head(self.layers(self.embed(x) + self.position).mean(dim=1))


def _cbs(cin: int, cout: int, k: int = 1, s: int = 1) -> nn.Sequential:
    """Conv + BatchNorm + SiLU, the YOLO building block."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class C2f(nn.Module):
    """CSP block: split the channels, run bottlenecks on one half, concatenate every stage."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        self.h = cout // 2
        self.cv1 = _cbs(cin, 2 * self.h)
        self.blocks = nn.ModuleList(nn.Sequential(_cbs(self.h, self.h, 3), _cbs(self.h, self.h, 3))
                                    for _ in range(n))
        self.cv2 = _cbs((2 + n) * self.h, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).split((self.h, self.h), 1))
        for block in self.blocks:
            parts.append(parts[-1] + block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = _cbs(c, c // 2), _cbs(c * 2, c)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloLike(nn.Module):
    """A YOLOv8-shaped detector: SiLU, C2f backbone, SPPF, upsample + concat neck, three heads
    concatenated into (batch, anchors, 5 + classes): objectness, box (cx, cy, w, h), classes."""

    OUT = 5 + 10

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbs(3, 16, 3, 2), _cbs(16, 32, 3, 2), C2f(32, 32, 1))
        self.p3 = nn.Sequential(_cbs(32, 64, 3, 2), C2f(64, 64, 2))
        self.p4 = nn.Sequential(_cbs(64, 128, 3, 2), C2f(128, 128, 2))
        self.p5 = nn.Sequential(_cbs(128, 256, 3, 2), C2f(256, 256, 1), SPPF(256))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4, self.n3 = C2f(384, 128), C2f(192, 64)
        self.heads = nn.ModuleList(nn.Sequential(_cbs(c, 64, 3), nn.Conv2d(64, self.OUT, 1))
                                   for c in (64, 128, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = self.n3(torch.cat([self.up(n4), p3], 1))
        outs = [head(f).flatten(2) for head, f in zip(self.heads, (n3, n4, p5))]
        return torch.cat(outs, 2).transpose(1, 2)
