"""Small models with torchvision's exact ``state_dict`` layout (torchvision itself is not a dependency).

Why: real checkpoints are torchvision state_dicts - ``features.0.0.weight``, ``features.0.1.running_var``,
``features.1.conv.0.0.weight``, ``layer1.0.downsample.1.num_batches_tracked`` - with 0-dim int64
buffers and BatchNorm statistics that span orders of magnitude. These factories rebuild those names
and module nesting (``--arch support.tv_layout:mobilenet_v2``) at a width that runs in a test.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv2dNormActivation(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU6/ReLU, numbered 0/1/2 like torchvision.ops.misc."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU6,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``conv.0`` expand (1x1), ``conv.1`` depthwise, ``conv.2`` project, ``conv.3`` BN."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(Conv2dNormActivation(cin, hidden, kernel=1))
        layers += [
            Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2's layout (``features`` / ``classifier.1``) at a reduced width."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        settings: tuple = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2)),
    ) -> None:
        super().__init__()
        c = 8
        features: list[nn.Module] = [Conv2dNormActivation(in_channels, c, stride=2)]
        for t, cout, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        features.append(Conv2dNormActivation(c, 32, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: conv1/bn1/conv2/bn2 and a ``downsample`` (conv, BN) Sequential."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    """torchvision.models.resnet18's layout (conv1/bn1/layer1..4/fc) with one block per stage, narrow."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths: tuple = (8, 16, 24, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = widths[0]
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(c, w, 1 if i == 0 else 2)))
            c = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mobilenet_v2(**kwargs: object) -> MobileNetV2:
    return MobileNetV2(**kwargs)  # type: ignore[arg-type]


def resnet18ish(**kwargs: object) -> ResNet:
    return ResNet(**kwargs)  # type: ignore[arg-type]


def pretrained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm statistics like a trained network's, measured rather than invented.

    Channel 0 of every conv before a BatchNorm is nearly dead (weights x 1e-3, as after training with
    weight decay), so its running variance comes out ~1e-6 of the others - the case a 1-D step of
    max/2048 decodes to 0. Statistics are the exact averages over a few random batches (momentum None),
    then the affine parameters are moved away from 1/0.
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight[0].mul_(1e-3)
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        for _ in range(4):
            model(torch.randn(16, convs[0].in_channels, 32, 32, generator=g))
        for bn in bns:
            bn.momentum = 0.1
            bn.weight.copy_(1 + 0.3 * torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=g))
    return model.eval()
