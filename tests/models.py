"""Small models with OpenMMLab parameter names that exercise every paramwise rule."""

from __future__ import annotations

import torch
from torch import nn


class ConvModule(nn.Module):
    """mmcv-style ConvModule: ``conv`` + optional norm named ``bn``/``gn``/``ln``."""

    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 1, norm: str | None = "bn",
                 bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)
        if norm == "bn":
            self.bn = nn.BatchNorm2d(cout)
        elif norm == "syncbn":
            self.bn = nn.SyncBatchNorm(cout)
        elif norm == "gn":
            self.gn = nn.GroupNorm(2, cout)
        elif norm == "in":
            self.in_ = nn.InstanceNorm2d(cout, affine=True)


class Scale(nn.Module):
    """mmcv Scale: a 0-d learnable factor."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))


class MixedNormNet(nn.Module):
    """GroupNorm, SyncBN, LayerNorm, InstanceNorm, depthwise convs with bias, Scale, embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvModule(3, 8, norm="syncbn")
        self.dw = ConvModule(8, 8, groups=8, norm="gn", bias=True)
        self.dw_nonorm = nn.Conv2d(8, 8, 3, groups=8)  # dwconv with bias, no norm
        self.grouped = nn.Conv2d(8, 8, 3, groups=2)    # grouped, not depthwise
        self.inorm = ConvModule(8, 4, norm="in")
        self.head = nn.ModuleDict({
            "cls_convs": nn.ModuleList([ConvModule(4, 4, norm="gn", bias=True) for _ in range(2)]),
            "scales": nn.ModuleList([Scale() for _ in range(3)]),
        })
        self.ln = nn.LayerNorm(4)
        self.ln_noaffine = nn.LayerNorm(4, elementwise_affine=False)
        self.query_embed = nn.Embedding(5, 4)
        self.level_embed = nn.Parameter(torch.zeros(3, 4))
        self.pos_bias = nn.Parameter(torch.zeros(4))  # 1-D, not named bias
        self.fc = nn.Linear(4, 2)
        self.conv1d = nn.Conv1d(2, 2, 1)


class SharedNet(nn.Module):
    """Tied weights (embedding/decoder), a submodule shared by two parents, a shared bias."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.decoder = nn.Linear(6, 10)
        self.decoder.weight = self.embed.weight
        shared = ConvModule(4, 4, norm="bn", bias=True)
        self.branch_a = nn.Sequential(nn.Conv2d(4, 4, 1), shared)
        self.branch_b = nn.Sequential(shared, nn.Conv2d(4, 4, 1))
        self.branch_b[1].bias = self.branch_a[0].bias
        self.norm = nn.LayerNorm(6)


class FrozenStemNet(nn.Module):
    """A ResNet-like stem frozen as ``frozen_stages=1`` does, plus a frozen norm layer."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv1 = nn.Conv2d(3, 8, 7, bias=False)
        self.backbone.bn1 = nn.BatchNorm2d(8)
        self.backbone.layer1 = nn.Sequential(ConvModule(8, 8, bias=True), ConvModule(8, 8))
        self.neck = ConvModule(8, 8, norm="gn", bias=True)
        self.bbox_head = nn.Linear(8, 4)
        for p in [*self.backbone.conv1.parameters(), *self.backbone.bn1.parameters()]:
            p.requires_grad_(False)
        self.neck.gn.weight.requires_grad_(False)


class FrozenSharedNet(nn.Module):
    """A frozen tensor reachable twice (mmcv adds it twice and torch raises)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight
        self.a.weight.requires_grad_(False)


class OddNamesNet(nn.Module):
    """Top-level parameters, unicode names, names that contain rule words as substrings."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))              # top-level: matched as '.bias'
        self.weight = nn.Parameter(torch.zeros(3, 3))
        self.add_module("σ_branch", nn.Linear(3, 3))
        self.add_module("块", nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 3, bias=False)))
        self.bias_proj = nn.Linear(3, 3)                      # 'bias' substring, not a bias rule
        self.norm_like = nn.Linear(3, 3)                      # 'norm' substring, not a norm layer
        self.conv_offset = nn.Conv2d(3, 18, 3)                # conv_offset outside DCN
        self.plist = nn.ParameterList([nn.Parameter(torch.zeros(2)) for _ in range(3)])
        self.pdict = nn.ParameterDict({"bias": nn.Parameter(torch.zeros(2)),
                                       "gamma": nn.Parameter(torch.zeros(2))})
        self.register_parameter("none_param", None)
        self.layers = nn.ModuleList([nn.Linear(3, 3) for _ in range(12)])  # 'layers.1' vs 'layers.11'


class DataParallelLike(nn.Module):
    """A DDP-style wrapper: the references unwrap ``model.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
