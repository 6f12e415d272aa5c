"""capslib: deep capsule networks, vanishing activations and channel pruning.

A companion library to Sahu & Altahhan (2024), *Mitigating Vanishing
Activations in Deep CapsNets Using Channel Pruning*.
"""
from .engine.provenance import __version__  # noqa: F401
from .engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig, profile  # noqa: F401
from .engine.model import CapsNet, CapsNetOutput  # noqa: F401
