import pytest
import torch

from nba.errors import ConfigError
from training.device import resolve_device


def test_default_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("NBA_DEVICE", raising=False)
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_explicit_and_environment_choice(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("NBA_DEVICE", "cpu")
    assert resolve_device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_a_named_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")


def test_nonsense_device_is_a_named_error():
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_land_on_the_gpu():
    x = torch.ones(3, device=resolve_device())
    assert x.is_cuda
