"""CapsNet[C, D, I] of Sahu & Altahhan (2024), §3.1, assembled from a :class:`ModelConfig`.

    image (B, Cin, S, S)
      -> backbone: 3 × (Conv2d, BatchNorm2d, ReLU)            (B, C·D, S', S')
      -> PrimaryCaps: Conv2d(C·D) + group + squash            (B, G, G, C, D)
      -> I × IntermediateCaps (ConvCaps 3×3, dynamic routing) (B, G, G, C, D)   [+ input, ``residual``]
      -> ClassCaps (fully connected, dynamic routing)         (B, N, M)

The class prediction is the longest class capsule. ``forward`` returns a
:class:`CapsNetOutput`, which also carries every capsule layer's output (for
the dead-capsule probes) and the conv feature maps the CCM loss and CHIP use.

``ModelConfig.routing`` picks the capsule layers (:func:`build_capsule_layers`):
"dynamic" (above, the default) or seed 002's "em", "self", "vb"
(:mod:`capslib.engine.routing_alt`). Those keep the backbone and the PrimaryCaps conv,
add a head for the primary activations, and give every capsule a pose plus a
separate scalar activation; the class scores are then the class activations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .capsules import ClassCaps, ConvCaps, PrimaryCaps
from .config import ModelConfig

__all__ = ["CapsNet", "CapsNetOutput", "ConvBNReLU", "build_capsule_layers", "count_params"]


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
        activations: None for dynamic routing (a capsule's activation is its
            length). For "em", "self", "vb": capsule layer name -> the separate
            scalar activation (B, H, W, types), "class" as (B, 1, 1, N); then
            ``capsules`` holds the poses, ``lengths`` the class activations (the
            class scores, in [0, 1]) and ``class_caps`` the class poses (B, N, D),
            or (B, N, 1) = the activations where a routing has no class pose (self).
    """

    class_caps: Tensor
    lengths: Tensor
    capsules: dict[str, Tensor]
    feature_maps: dict[str, Tensor]
    activations: Optional[dict[str, Tensor]] = None

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
                                   cfg.primary_padding, layout=cfg.capsule_layout, squash_eps=cfg.squash_eps,
                                   squash_fn=cfg.squash_fn)
        # primary_head is None for dynamic routing; intermediate[i] and classcaps route as cfg.routing says
        self.primary_head, self.intermediate, self.classcaps = build_capsule_layers(cfg)

    @property
    def capsule_layer_names(self) -> list[str]:
        return ["primary"] + [f"inter{i + 1}" for i in range(len(self.intermediate))] + ["class"]

    @property
    def conv_layer_names(self) -> list[str]:
        return ["conv1", "conv2", "conv3", "primary"]

    def forward(self, x: Tensor) -> CapsNetOutput:
        """x: (B, in_channels, S, S) -> :class:`CapsNetOutput`."""
        maps: dict[str, Tensor] = {}
        h = x.to(self.primary.conv.weight.dtype)  # float32 images into a float64 model (TrainConfig.dtype)
        for i, layer in enumerate(self.backbone):
            h = layer(h)  # (B, width_i, S_i, S_i)
            maps[f"conv{i + 1}"] = h
        if self.primary_head is not None:
            return self._forward_with_activations(h, maps)
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

    def _forward_with_activations(self, h: Tensor, maps: dict[str, Tensor]) -> CapsNetOutput:
        """EM, self- and VB routing: every capsule is a pose plus a scalar activation."""
        pre = self.primary.conv(h)  # (B, C·D, G, G), the shared PrimaryCaps conv
        maps["primary"] = pre
        a, pose = self.primary_head(h, pre)  # (B, G, G, C), (B, G, G, C, D)
        caps, acts = {"primary": pose}, {"primary": a}
        for i, layer in enumerate(self.intermediate):
            a, pose = layer(a, pose)  # (B, G, G, C), (B, G, G, C, D)
            caps[f"inter{i + 1}"], acts[f"inter{i + 1}"] = pose, a
        a_cls, v = self.classcaps(a, pose)  # (B, N), (B, N, D) or None
        if v is None:
            v = a_cls.unsqueeze(-1)  # (B, N, 1): a class capsule without pose is its activation
        caps["class"], acts["class"] = v[:, None, None], a_cls[:, None, None]
        return CapsNetOutput(class_caps=v, lengths=a_cls, capsules=caps, feature_maps=maps, activations=acts)


def build_capsule_layers(cfg: ModelConfig) -> tuple[Optional[nn.Module], nn.ModuleList, nn.Module]:
    """(primary activation head or None, I IntermediateCaps, ClassCaps) for ``cfg.routing``."""
    if cfg.routing == "dynamic":
        intermediate = nn.ModuleList(
            ConvCaps(cfg.C, cfg.D, cfg.C, cfg.D, kernel=3, stride=1, padding=1, iters=cfg.routing_iters,
                     init_std=cfg.init_std, recompute=cfg.recompute_votes, squash_eps=cfg.squash_eps,
                     layout=cfg.convcaps_layout, squash_bias=cfg.squash_bias, squash_fn=cfg.squash_fn,
                     residual=cfg.residual)
            for _ in range(cfg.I)
        )
        classcaps = ClassCaps(cfg.grid * cfg.grid * cfg.C, cfg.D, cfg.num_classes, cfg.class_dim,
                              iters=cfg.routing_iters, init_std=cfg.class_std, recompute=cfg.recompute_votes,
                              squash_eps=cfg.squash_eps, squash_bias=cfg.squash_bias, squash_fn=cfg.squash_fn)
        return None, intermediate, classcaps
    from .routing_alt import build_alt_layers

    return build_alt_layers(cfg)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
