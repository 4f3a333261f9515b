"""Shared set-up of the CPU benchmarks: the models and data, built once per session."""
import pytest
import torch


@pytest.fixture(scope="session")
def resnet50_conv_weights():
    """Every groupable (input channels divisible by 4) conv weight of a timm ResNet-50."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet50")
    return [m.weight.detach() for m in model.modules()
            if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] % 4 == 0]
