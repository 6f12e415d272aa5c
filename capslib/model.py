"""CapsNet[C, D, I] of Sahu & Altahhan (2024), §3.1, assembled from a :class:`ModelConfig`.

    image (B, Cin, S, S)
      -> backbone: 3 × (Conv2d, BatchNorm2d, ReLU)            (B, C·D, S', S')
      -> PrimaryCaps: Conv2d(C·D) + group + squash            (B, G, G, C, D)
      -> I × IntermediateCaps (ConvCaps 3×3, dynamic routing) (B, G, G, C, D)
      -> ClassCaps (fully connected, dynamic routing)         (B, N, M)

The class prediction is the longest class capsule. ``forward`` returns a
:class:`CapsNetOutput`, which also carries every capsule layer's output (for
the dead-capsule probes) and the conv feature maps the CCM loss and CHIP use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .capsules import ClassCaps, ConvCaps, PrimaryCaps
from .config import ModelConfig

__all__ = ["CapsNet", "CapsNetOutput", "ConvBNReLU", "count_params"]


@dataclass
class CapsNetOutput:
    """What one forward pass produces.

    Attributes:
        class_caps: (B, N, M) class capsule vectors.
        lengths: (B, N) their lengths, in [0, 1): the class scores.
        capsules: capsule layer name -> output, each (B, H, W, types, dims):
            "primary", "inter1" ... "interI", and "class" as (B, 1, 1, N, M).
        feature_maps: conv layer name -> feature map (B, ch, H, W): "conv1",
            "conv2", "conv3" are the backbone's post-ReLU outputs; "primary" is
            the PrimaryCaps conv output before squash. CCM and CHIP read these.
    """

    class_caps: Tensor
    lengths: Tensor
    capsules: dict[str, Tensor]
    feature_maps: dict[str, Tensor]

    @property
    def prediction(self) -> Tensor:
        return self.lengths.argmax(dim=1)


class ConvBNReLU(nn.Sequential):
    """One backbone layer: Conv2d -> BatchNorm2d -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=False),
        )

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]


class CapsNet(nn.Module):
    """CapsNet[C, D, I]; see the module docstring for the data flow.

    Backbone widths default to (C·D/4, C·D/2, C·D), the widths of the authors'
    public code; kernels, strides, padding and widths are config fields
    (Table 4 uses 5×5 kernels with stride 1 and no padding).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        cfg = config
        grid = cfg.grid  # validates sizes, naming the layer that collapses
        widths = cfg.widths
        chans = (cfg.in_channels,) + widths
        self.backbone = nn.ModuleList(
            ConvBNReLU(chans[i], chans[i + 1], cfg.backbone_kernels[i], cfg.backbone_strides[i],
                       cfg.backbone_padding[i])
            for i in range(3)
        )
        self.primary = PrimaryCaps(widths[2], cfg.C, cfg.D, cfg.primary_kernel, cfg.primary_stride,
                                   cfg.primary_padding, layout=cfg.capsule_layout)
        self.intermediate = nn.ModuleList(
            ConvCaps(cfg.C, cfg.D, cfg.C, cfg.D, kernel=3, stride=1, padding=1, iters=cfg.routing_iters,
                     init_std=cfg.init_std, recompute=cfg.recompute_votes)
            for _ in range(cfg.I)
        )
        self.classcaps = ClassCaps(grid * grid * cfg.C, cfg.D, cfg.num_classes, cfg.class_dim,
                                   iters=cfg.routing_iters, init_std=cfg.init_std,
                                   recompute=cfg.recompute_votes)

    @property
    def capsule_layer_names(self) -> list[str]:
        return ["primary"] + [f"inter{i + 1}" for i in range(len(self.intermediate))] + ["class"]

    @property
    def conv_layer_names(self) -> list[str]:
        return ["conv1", "conv2", "conv3", "primary"]

    def forward(self, x: Tensor) -> CapsNetOutput:
        """x: (B, in_channels, S, S) -> :class:`CapsNetOutput`."""
        maps: dict[str, Tensor] = {}
        h = x
        for i, layer in enumerate(self.backbone):
            h = layer(h)  # (B, width_i, S_i, S_i)
            maps[f"conv{i + 1}"] = h
        u, pre = self.primary(h)  # (B, G, G, C, D), (B, C·D, G, G)
        maps["primary"] = pre
        caps = {"primary": u}
        for i, layer in enumerate(self.intermediate):
            u = layer(u)  # (B, G, G, C, D)
            caps[f"inter{i + 1}"] = u
        v = self.classcaps(u)  # (B, N, M)
        caps["class"] = v[:, None, None]  # (B, 1, 1, N, M)
        lengths = torch.linalg.vector_norm(v, dim=-1)  # (B, N)
        return CapsNetOutput(class_caps=v, lengths=lengths, capsules=caps, feature_maps=maps)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
