import importlib
import inspect
import math
import pydoc
import re

import pytest
import torch
from conftest import CONFIGS
from torch import nn

from lsl.errors import ConfigError
from lsl.models import (
    CifarResNet,
    PreActResNet18,
    ResNet50,
    SmallCNN,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)

BACKBONES = [CifarResNet, PreActResNet18, SmallCNN, ResNet50]
# Every name lsl.models exported when it was one module: importers and configs (class_path) use them.
LSL_MODELS_NAMES = ("CifarResNet", "PreActResNet18", "ResNet50", "SmallCNN", "resnet20", "resnet32", "resnet44",
                    "resnet56", "resnet110")


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shortcut_modules(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith("shortcut")]


@pytest.mark.parametrize(
    ("model", "shape", "num_classes"),
    [
        (lambda: CifarResNet(10, depth=20), (2, 3, 32, 32), 10),
        (lambda: CifarResNet(10, depth=20, shortcut="B"), (2, 3, 32, 32), 10),
        (lambda: CifarResNet(5, depth=8, in_channels=1), (2, 1, 28, 28), 5),
        (lambda: SmallCNN(10), (2, 1, 28, 28), 10),
        (lambda: SmallCNN(10), (2, 1, 8, 8), 10),
        (lambda: SmallCNN(4, in_channels=3, width=8), (2, 3, 32, 32), 4),
        (lambda: SmallCNN(10, pooled_size=7), (2, 1, 28, 28), 10),
        (lambda: PreActResNet18(100), (2, 3, 32, 32), 100),
        (lambda: ResNet50(1000), (1, 3, 64, 64), 1000),
    ],
)
def test_output_shape(model, shape, num_classes):
    net = model().eval()
    with torch.no_grad():
        logits = net(torch.randn(shape))
    assert logits.shape == (shape[0], num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("factory", "depth", "paper_params"),
    [(resnet20, 20, 0.27e6), (resnet32, 32, 0.46e6), (resnet44, 44, 0.66e6), (resnet56, 56, 0.85e6), (resnet110, 110, 1.7e6)],
)
def test_cifar_resnet_matches_he_et_al(factory, depth, paper_params):
    model = factory()
    assert isinstance(model, CifarResNet)
    assert abs(num_params(model) - paper_params) / paper_params < 0.02
    convs = [m for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in name]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 16


def test_resnet110_forward():
    model = resnet110(3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_cifar_resnet_downsamples_to_8x8_with_64_channels():
    model = resnet20()
    features = model.layers(model.conv1(torch.randn(2, 3, 32, 32)))
    assert features.shape == (2, 64, 8, 8)


def test_shortcut_a_is_parameter_free_and_b_projects():
    model_a, model_b = resnet20(shortcut="A"), resnet20(shortcut="B")
    shortcuts_a = [m for m in shortcut_modules(model_a) if not isinstance(m, nn.Identity)]
    shortcuts_b = [m for m in shortcut_modules(model_b) if not isinstance(m, nn.Identity)]
    # Only the first blocks of stages 2 and 3 change shape.
    assert len(shortcuts_a) == len(shortcuts_b) == 2
    assert sum(num_params(m) for m in shortcuts_a) == 0
    projections = [m for s in shortcuts_b for m in s.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in projections] == [
        (16, 32, (1, 1), (2, 2)),
        (32, 64, (1, 1), (2, 2)),
    ]
    assert num_params(model_b) - num_params(model_a) == sum(num_params(m) for m in shortcuts_b)


def test_shortcut_a_subsamples_and_zero_pads():
    shortcut = next(m for m in shortcut_modules(resnet20()) if not isinstance(m, nn.Identity))
    x = torch.randn(2, 16, 32, 32)
    out = shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    kept = out.abs().flatten(2).sum(-1) > 0
    assert kept.sum(1).tolist() == [16, 16]
    channels = kept[0].nonzero().flatten()
    torch.testing.assert_close(out[:, channels], x[:, :, ::2, ::2])


@pytest.mark.parametrize("depth", [33, 21, 2, 0])
def test_bad_depth_raises_config_error(depth):
    with pytest.raises(ConfigError, match=rf"\b{depth}\b"):
        CifarResNet(10, depth=depth)


def test_bad_shortcut_raises_config_error():
    with pytest.raises(ConfigError, match="C"):
        CifarResNet(10, shortcut="C")


@pytest.mark.parametrize("cls", BACKBONES)
def test_num_classes_is_first_parameter(cls):
    _self, first, *_ = inspect.signature(cls.__init__).parameters.values()
    assert first.name == "num_classes" and first.annotation in (int, "int")


@pytest.mark.parametrize("cls", [CifarResNet, PreActResNet18, SmallCNN])
def test_positional_num_classes(cls):
    channels = 1 if cls is SmallCNN else 3
    with torch.no_grad():
        assert cls(7).eval()(torch.randn(2, channels, 32, 32)).shape == (2, 7)


def test_resnet50_positional_num_classes():
    model = ResNet50(7)
    assert model.fc.out_features == 7
    assert num_params(ResNet50()) == 25_557_032  # torchvision's resnet50


@pytest.mark.parametrize(
    ("model", "shape"),
    [(lambda: resnet20(), (4, 3, 32, 32)), (lambda: resnet20(shortcut="B"), (4, 3, 32, 32)), (lambda: SmallCNN(), (4, 1, 28, 28))],
)
def test_backward_gives_finite_gradients(model, shape):
    net = model()
    loss = nn.functional.cross_entropy(net(torch.randn(shape)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_every_name_lsl_models_exported_still_imports_from_it():
    package = importlib.import_module("lsl.models")
    assert [name for name in LSL_MODELS_NAMES if not hasattr(package, name)] == []
    assert sorted(package.__all__) == sorted(LSL_MODELS_NAMES)


def test_every_lsl_models_path_in_the_configs_and_docs_is_a_backbone():
    repo = CONFIGS.parent
    texts = [path.read_text() for path in [*CONFIGS.rglob("*.yaml"), repo / "README.md", *(repo / "docs").rglob("*.md")]]
    named = {path for text in texts for path in re.findall(r"\blsl\.models(?:\.[A-Za-z_]\w*)+", text)}
    assert {"lsl.models.CifarResNet", "lsl.models.SmallCNN"} <= named
    found = {path: pydoc.locate(path) for path in sorted(named)}
    assert [path for path, cls in found.items() if not (isinstance(cls, type) and issubclass(cls, nn.Module))] == []


@pytest.mark.parametrize("model", [lambda: resnet20(), lambda: resnet20(shortcut="B"), lambda: PreActResNet18(10),
                                   lambda: SmallCNN(10, width=64)])
def test_initialisation_is_he_et_al(model):
    """Convs Kaiming-normal for ReLU with fan_out (std sqrt(2 / fan_out)); BatchNorm weight 1, bias 0."""
    torch.manual_seed(0)
    net = model()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.weight.numel() >= 4096]
    assert convs
    for conv in convs:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_out)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
