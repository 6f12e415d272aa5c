"""capslib: deep capsule networks, vanishing activations and channel pruning.

A companion library to Sahu & Altahhan (2024), *Mitigating Vanishing
Activations in Deep CapsNets Using Channel Pruning*.
"""
__version__ = "0.1.0"

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, profile  # noqa: E402,F401
from .model import CapsNet, CapsNetOutput  # noqa: E402,F401
