"""Reference architectures used by the embedded examples, the tests and the benchmarks.

They are ordinary ``nn.Module`` factories, addressable from the command line as
``--arch edgeprune.models:resnet20`` with ``--arch-kwargs '{"num_classes": 10}'``. They cover the
structures every stage must handle: plain chains, Flatten->Linear, BatchNorm, residual adds with
identity / zero-padding / projection shortcuts, concat, depthwise and grouped convolutions, ReLU6,
squeeze-and-excitation gates and 1-D convolutions.
"""

from edgeprune.models.zoo import (
    ConvNet1d,
    DenseNetLike,
    LeNet5,
    LeNet300,
    MobileNetV2Like,
    ResNetCifar,
    SENet,
    VGGCifar,
    conv1d_net,
    densenet_like,
    lenet5,
    lenet300,
    mobilenetv2_like,
    resnet18_like,
    resnet20,
    resnet32,
    se_net,
    vgg16_cifar,
)

__all__ = [
    "ConvNet1d",
    "DenseNetLike",
    "LeNet5",
    "LeNet300",
    "MobileNetV2Like",
    "ResNetCifar",
    "SENet",
    "VGGCifar",
    "conv1d_net",
    "densenet_like",
    "lenet5",
    "lenet300",
    "mobilenetv2_like",
    "resnet18_like",
    "resnet20",
    "resnet32",
    "se_net",
    "vgg16_cifar",
]
