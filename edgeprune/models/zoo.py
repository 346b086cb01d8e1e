"""Model definitions (see the package docstring for why these particular ones)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet300(nn.Module):
    """LeNet-300-100: the fully connected MNIST baseline of the SeReNe/LOBSTER papers."""

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(self.flatten(x)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """Caffe-style LeNet-5 (20/50 conv filters, 500 hidden units) for any square input size.

    5x5 kernels for inputs of 28 pixels or more (the classic 431k-parameter MNIST net); 3x3 padded
    kernels for tiny inputs such as the 8x8 scikit-learn digits, where 5x5 would not fit twice.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> None:
        super().__init__()
        k, p = (5, 0) if input_size >= 28 else (3, 1)
        self.conv1 = nn.Conv2d(in_channels, 20, k, padding=p)
        self.conv2 = nn.Conv2d(20, 50, k, padding=p)
        side = input_size
        for _ in range(2):
            side = (side - k + 2 * p + 1) // 2
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


class VGGCifar(nn.Module):
    """VGG with BatchNorm for 32x32 inputs (the CIFAR variant: one 512-unit Linear head)."""

    CFG_16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, cfg: tuple = CFG_16, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class BasicBlock(nn.Module):
    """ResNet basic block; ``shortcut`` is "A" (subsample + zero channel padding) or "B" (1x1 conv + BN)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = 0
        self.proj: nn.Module | None = None
        self.stride = stride
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.pad = cout - cin
            else:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.proj is not None:
            sc = self.proj(x)
        elif self.pad:
            half = self.pad // 2
            sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, half, self.pad - half))
        else:
            sc = x
        return F.relu(out + sc)


class ResNetCifar(nn.Module):
    """CIFAR ResNet (He et al. 2016, §4.2): 6n+2 layers, widths 16/32/64; or ResNet-18-like stages."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...] = (3, 3, 3),
        widths: tuple[int, ...] = (16, 32, 64),
        shortcut: str = "A",
        in_channels: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks: list[nn.Module] = []
        c = widths[0]
        for stage, (n, w) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(c, w, stride, shortcut))
                c = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2Like(nn.Module):
    """A small MobileNetV2 (depthwise convs, inverted residuals, ReLU6) for 32x32 inputs."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1))

    def __init__(self, in_channels: int = 3, num_classes: int = 10, settings: tuple = SETTINGS) -> None:
        super().__init__()
        c = 32
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU6(inplace=True),
        ]
        for t, cout, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        layers += [nn.Conv2d(c, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class DenseLayer(nn.Module):
    """DenseNet layer: BN-ReLU-conv producing ``growth`` channels that are concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class DenseNetLike(nn.Module):
    """A DenseNet-style net: a stem, a dense block of concatenations, a transition, a classifier."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, growth: int = 12, layers: int = 4) -> None:
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1)
        dense: list[nn.Module] = []
        for _ in range(layers):
            dense.append(DenseLayer(c, growth))
            c += growth
        self.dense = nn.Sequential(*dense)
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c // 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.transition(self.dense(self.stem(x))))


class SEBlock(nn.Module):
    """Squeeze-and-excitation: a multiplicative gate, so its channels are not constant-foldable."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // reduction, 1)
        self.fc2 = nn.Conv2d(c // reduction, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class SENet(nn.Module):
    """Two conv stages with a squeeze-and-excitation gate in between."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.se = SEBlock(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(F.relu(self.conv1(x)))
        return self.head(F.relu(self.conv2(x)))


class ConvNet1d(nn.Module):
    """A 1-D signal classifier: Conv1d + BatchNorm1d + Linear after Flatten."""

    def __init__(self, in_channels: int = 1, num_classes: int = 5, length: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm1d(32)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * (length // 2), 64)
        self.bn3 = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.fc1(self.flatten(x))))
        return self.fc2(x)


def lenet300(in_features: int = 784, num_classes: int = 10) -> LeNet300:
    return LeNet300(in_features, num_classes)


def lenet5(in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> LeNet5:
    return LeNet5(in_channels, num_classes, input_size)


def vgg16_cifar(in_channels: int = 3, num_classes: int = 10) -> VGGCifar:
    return VGGCifar(VGGCifar.CFG_16, in_channels, num_classes)


def resnet20(in_channels: int = 3, num_classes: int = 10, shortcut: str = "A") -> ResNetCifar:
    return ResNetCifar((3, 3, 3), (16, 32, 64), shortcut, in_channels, num_classes)


def resnet32(in_channels: int = 3, num_classes: int = 10, shortcut: str = "A") -> ResNetCifar:
    return ResNetCifar((5, 5, 5), (16, 32, 64), shortcut, in_channels, num_classes)


def resnet18_like(in_channels: int = 3, num_classes: int = 10) -> ResNetCifar:
    """ResNet-18 stage layout (2-2-2-2 blocks, projection shortcuts) at reduced width for tests."""
    return ResNetCifar((2, 2, 2, 2), (16, 32, 64, 128), "B", in_channels, num_classes)


def mobilenetv2_like(in_channels: int = 3, num_classes: int = 10) -> MobileNetV2Like:
    return MobileNetV2Like(in_channels, num_classes)


def densenet_like(in_channels: int = 3, num_classes: int = 10) -> DenseNetLike:
    return DenseNetLike(in_channels, num_classes)


def se_net(in_channels: int = 3, num_classes: int = 10) -> SENet:
    return SENet(in_channels, num_classes)


def conv1d_net(in_channels: int = 1, num_classes: int = 5, length: int = 64) -> ConvNet1d:
    return ConvNet1d(in_channels, num_classes, length)
