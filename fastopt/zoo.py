"""Detector/segmenter-shaped models with the real OpenMMLab parameter names.

Every builder returns a plain ``torch.nn`` module tree whose ``named_parameters()``
match the real mmdetection 3.x / mmsegmentation / mmcv 2.x model: the same
parameter names and order, the same module classes (BatchNorm2d, SyncBatchNorm,
GroupNorm, LayerNorm, depthwise Conv2d, Linear, Embedding, raw Parameters such as
Swin ``relative_position_bias_table`` or 0-d ``Scale.scale``), the same
``requires_grad`` flags (frozen stages) and the real tensor count at full depth.
Channel counts are scaled by ``width`` (rounded so GroupNorm groups and attention
heads still divide them) so that a model builds in milliseconds; ``width=1.0``
gives the real shapes. CNN parts, Swin and ViT backbones have a ``forward``; the
RoI heads run on pooled RoI features; DETR-style transformer heads have none.

>>> from fastopt.zoo import build, count_tensors
>>> count_tensors(build('faster_rcnn_r50_fpn'))
189
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    'DEFAULT_WIDTH',
    'MODELS',
    'ZooModel',
    'build',
    'count_numel',
    'count_tensors',
    'synthetic',
]

DEFAULT_WIDTH: float = 1 / 32
"""Default channel multiplier: tiny tensors, real tensor counts."""

NormCfg = dict[str, Any]
Feats = tuple[Tensor, ...]


# --------------------------------------------------------------------- helpers
def _ch(channels: int, width: float, divisor: int = 1) -> int:
    """Scale ``channels`` by ``width``; round to a multiple of ``divisor`` (>= it)."""
    if width <= 0:
        raise ValueError(f'width must be > 0, got {width!r}')
    return max(divisor, round(channels * width / divisor) * divisor)


def _head_dim(real_head_dim: int, width: float) -> int:
    """Scale an attention head dimension by ``width`` (at least 1)."""
    return _ch(real_head_dim, width)


def make_divisible(
    value: float, divisor: int, min_value: int | None = None, min_ratio: float = 0.9
) -> int:
    """mmdet ``make_divisible``: round ``value`` to a multiple of ``divisor``."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


def _freeze(module: nn.Module) -> None:
    """Put ``module`` in eval mode and set ``requires_grad=False`` on its params."""
    module.eval()
    for param in module.parameters():
        param.requires_grad = False


class LN2d(nn.Module):
    """ViTDet ``LN2d``: channel LayerNorm on NCHW (deliberately not an nn.LayerNorm)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: Tensor) -> Tensor:
        """Normalize over the channel dimension."""
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


_NORM_LAYERS: dict[str, type[nn.Module]] = {
    'BN': nn.BatchNorm2d,
    'BN2d': nn.BatchNorm2d,
    'SyncBN': nn.SyncBatchNorm,
    'GN': nn.GroupNorm,
    'LN': nn.LayerNorm,
    'LN2d': LN2d,
}


def infer_abbr(class_type: type) -> str:
    """mmcv ``infer_abbr``: the attribute prefix a norm layer gets (bn, gn, ln...)."""
    if hasattr(class_type, '_abbr_'):
        return class_type._abbr_
    if issubclass(class_type, nn.modules.instancenorm._InstanceNorm):
        return 'in'
    if issubclass(class_type, nn.modules.batchnorm._BatchNorm):
        return 'bn'
    if issubclass(class_type, nn.GroupNorm):
        return 'gn'
    if issubclass(class_type, nn.LayerNorm):
        return 'ln'
    class_name = class_type.__name__.lower()
    for word, abbr in (('batch', 'bn'), ('group', 'gn'), ('layer', 'ln')):
        if word in class_name:
            return abbr
    return 'in' if 'instance' in class_name else 'norm_layer'


def build_norm_layer(
    cfg: NormCfg, num_features: int, postfix: int | str = ''
) -> tuple[str, nn.Module]:
    """mmcv ``build_norm_layer``: returns (name such as ``bn1``/``gn``, layer)."""
    cfg = dict(cfg)
    layer_type = cfg.pop('type')
    requires_grad = cfg.pop('requires_grad', True)
    norm_cls = _NORM_LAYERS[layer_type]
    name = infer_abbr(norm_cls) + str(postfix)
    cfg.setdefault('eps', 1e-5)
    if layer_type == 'GN':
        num_groups = cfg.pop('num_groups')
        if num_features % num_groups:
            raise ValueError(f'{num_features} channels not divisible by GN({num_groups})')
        layer: nn.Module = nn.GroupNorm(num_groups, num_features, **cfg)
    else:
        layer = norm_cls(num_features, **cfg)
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return name, layer


def _bn(requires_grad: bool = True, **kw: Any) -> NormCfg:
    """An mmcv ``dict(type='BN')`` norm config."""
    return dict(type='BN', requires_grad=requires_grad, **kw)


def _sync_bn() -> NormCfg:
    """An mmcv ``dict(type='SyncBN')`` norm config."""
    return dict(type='SyncBN', requires_grad=True)


def _gn(num_groups: int = 32) -> NormCfg:
    """An mmcv ``dict(type='GN', num_groups=32)`` norm config."""
    return dict(type='GN', num_groups=num_groups, requires_grad=True)


def _ln(eps: float = 1e-5) -> NormCfg:
    """An mmcv ``dict(type='LN')`` norm config."""
    return dict(type='LN', eps=eps)


def _resnet_norm(norm: str) -> NormCfg:
    """Norm config for a ResNet backbone: 'BN', 'SyncBN' or 'GN'."""
    if norm == 'BN':
        return _bn()
    if norm == 'SyncBN':
        return _sync_bn()
    if norm == 'GN':
        return _gn()
    raise ValueError(f"norm must be 'BN', 'SyncBN' or 'GN', got {norm!r}")


def _build_act(act: str | None, inplace: bool = True) -> nn.Module | None:
    """Build an activation layer by mmcv type name (or None)."""
    if act is None:
        return None
    if act == 'ReLU':
        return nn.ReLU(inplace=inplace)
    if act == 'ReLU6':
        return nn.ReLU6(inplace=inplace)
    if act == 'GELU':
        return nn.GELU()
    raise ValueError(f'unknown activation {act!r}')


class ConvModule(nn.Module):
    """mmcv ``ConvModule``: ``conv`` + optional norm (``bn``/``gn``/...) + ``activate``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | str = 'auto',
        norm_cfg: NormCfg | None = None,
        act: str | None = 'ReLU',
        inplace: bool = True,
    ) -> None:
        super().__init__()
        self.with_norm = norm_cfg is not None
        self.with_activation = act is not None
        self.with_bias = (not self.with_norm) if bias == 'auto' else bool(bias)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation,
            groups, bias=self.with_bias,
        )
        self.norm_name: str | None = None
        if norm_cfg is not None:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        activate = _build_act(act, inplace)
        if activate is not None:
            self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        """Conv, norm, activation."""
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        if self.with_activation:
            x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv ``DepthwiseSeparableConvModule``: ``depthwise_conv`` + ``pointwise_conv``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        norm_cfg: NormCfg | None = None,
        act: str | None = 'ReLU',
    ) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels, in_channels, kernel_size, stride, padding,
            groups=in_channels, norm_cfg=norm_cfg, act=act,
        )
        self.pointwise_conv = ConvModule(
            in_channels, out_channels, 1, norm_cfg=norm_cfg, act=act
        )

    def forward(self, x: Tensor) -> Tensor:
        """Depthwise then pointwise conv."""
        return self.pointwise_conv(self.depthwise_conv(x))


class Scale(nn.Module):
    """mmcv ``Scale``: a learnable 0-d scalar multiplier (``scale``)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: Tensor) -> Tensor:
        """Multiply by the scalar."""
        return x * self.scale


# ---------------------------------------------------------------------- ResNet
class Bottleneck(nn.Module):
    """mmdet ResNet ``Bottleneck``: conv1/bn1, conv2/bn2, conv3/bn3, ``downsample``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        style: str = 'pytorch',
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _bn()
        self.inplanes, self.planes, self.stride = inplanes, planes, stride
        self.style = style
        if style == 'pytorch':
            self.conv1_stride, self.conv2_stride = 1, stride
        else:
            self.conv1_stride, self.conv2_stride = stride, 1
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.norm3_name, norm3 = build_norm_layer(
            norm_cfg, planes * self.expansion, postfix=3
        )
        self.conv1 = nn.Conv2d(
            inplanes, planes, 1, stride=self.conv1_stride, bias=False
        )
        self.add_module(self.norm1_name, norm1)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=self.conv2_stride, padding=dilation,
            dilation=dilation, bias=False,
        )
        self.add_module(self.norm2_name, norm2)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.add_module(self.norm3_name, norm3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def norm1(self) -> nn.Module:
        """The first norm layer."""
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        """The second norm layer."""
        return getattr(self, self.norm2_name)

    @property
    def norm3(self) -> nn.Module:
        """The third norm layer."""
        return getattr(self, self.norm3_name)

    def forward(self, x: Tensor) -> Tensor:
        """Residual bottleneck."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.relu(out + identity)


class ResLayer(nn.Sequential):
    """mmdet ``ResLayer``: a Sequential of blocks, the first with ``downsample.0/1``."""

    def __init__(
        self,
        block: type[Bottleneck],
        inplanes: int,
        planes: int,
        num_blocks: int,
        stride: int = 1,
        style: str = 'pytorch',
        norm_cfg: NormCfg | None = None,
    ) -> None:
        norm_cfg = norm_cfg if norm_cfg is not None else _bn()
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    inplanes, planes * block.expansion, 1, stride=stride, bias=False
                ),
                build_norm_layer(norm_cfg, planes * block.expansion)[1],
            )
        layers = [
            block(inplanes, planes, stride, downsample=downsample, style=style,
                  norm_cfg=norm_cfg)
        ]
        inplanes = planes * block.expansion
        layers.extend(
            block(inplanes, planes, 1, style=style, norm_cfg=norm_cfg)
            for _ in range(1, num_blocks)
        )
        super().__init__(*layers)


def _stage_outputs(module: nn.Module, x: Tensor, names: Sequence[str],
                   out_indices: Sequence[int]) -> Feats:
    """Run the named stages in order and return the outputs of ``out_indices``."""
    outs = []
    for i, name in enumerate(names):
        x = getattr(module, name)(x)
        if i in out_indices:
            outs.append(x)
    return tuple(outs)


class ResNet(nn.Module):
    """mmdet ``ResNet``: conv1/bn1 stem, ``layer1``..``layer4``; frozen stages."""

    arch_settings: dict[int, tuple[type[Bottleneck], tuple[int, ...]]] = {
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(
        self,
        depth: int = 50,
        base_channels: int = 64,
        stem_channels: int | None = None,
        strides: Sequence[int] = (1, 2, 2, 2),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        style: str = 'pytorch',
        frozen_stages: int = -1,
        norm_cfg: NormCfg | None = None,
        stage_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth} for resnet')
        norm_cfg = norm_cfg if norm_cfg is not None else _bn()
        self.depth = depth
        stem_channels = stem_channels if stem_channels is not None else base_channels
        self.block, arch_blocks = self.arch_settings[depth]
        self.stage_blocks = tuple(stage_blocks) if stage_blocks else arch_blocks
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, stem_channels, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res_layers: list[str] = []
        inplanes = stem_channels
        for i, num_blocks in enumerate(self.stage_blocks):
            planes = base_channels * 2**i
            layer = ResLayer(
                self.block, inplanes, planes, num_blocks, stride=strides[i],
                style=style, norm_cfg=norm_cfg,
            )
            inplanes = planes * self.block.expansion
            name = f'layer{i + 1}'
            self.add_module(name, layer)
            self.res_layers.append(name)
        self.out_channels = [
            base_channels * 2**i * self.block.expansion
            for i in range(len(self.stage_blocks))
        ]
        self._freeze_stages()

    @property
    def norm1(self) -> nn.Module:
        """The stem norm layer."""
        return getattr(self, self.norm1_name)

    def _freeze_stages(self) -> None:
        """Freeze the stem and the first ``frozen_stages`` stages (as mmdet does)."""
        if self.frozen_stages >= 0:
            _freeze(self.conv1)
            _freeze(self.norm1)
        for i in range(1, self.frozen_stages + 1):
            _freeze(getattr(self, f'layer{i}'))

    def forward(self, x: Tensor) -> Feats:
        """Return the feature maps of ``out_indices``."""
        x = self.maxpool(self.relu(self.norm1(self.conv1(x))))
        return _stage_outputs(self, x, self.res_layers, self.out_indices)


# ---------------------------------------------------------------------- necks
class FPN(nn.Module):
    """mmdet ``FPN``: ``lateral_convs.{i}.conv`` and ``fpn_convs.{i}.conv``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: bool | str = False,
        relu_before_extra_convs: bool = False,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.backbone_end_level = self.num_ins if end_level == -1 else end_level
        self.start_level = start_level
        if add_extra_convs is True:
            add_extra_convs = 'on_input'
        self.add_extra_convs = add_extra_convs
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(
                in_channels[i], out_channels, 1, norm_cfg=norm_cfg, act=None,
                inplace=False,
            ))
            self.fpn_convs.append(ConvModule(
                out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                act=None, inplace=False,
            ))
        extra_levels = num_outs - self.backbone_end_level + start_level
        if add_extra_convs and extra_levels >= 1:
            for i in range(extra_levels):
                if i == 0 and add_extra_convs == 'on_input':
                    extra_in = in_channels[self.backbone_end_level - 1]
                else:
                    extra_in = out_channels
                self.fpn_convs.append(ConvModule(
                    extra_in, out_channels, 3, stride=2, padding=1,
                    norm_cfg=norm_cfg, act=None, inplace=False,
                ))

    def forward(self, inputs: Feats) -> Feats:
        """Top-down FPN with optional extra levels."""
        laterals = [
            conv(inputs[i + self.start_level])
            for i, conv in enumerate(self.lateral_convs)
        ]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode='nearest'
            )
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == 'on_input':
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == 'on_lateral':
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](prev))
        return tuple(outs)


class ChannelMapper(nn.Module):
    """mmdet ``ChannelMapper``: ``convs.{i}`` and ``extra_convs.{i}`` (DETR necks)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        kernel_size: int = 1,
        norm_cfg: NormCfg | None = None,
        act: str | None = None,
        num_outs: int | None = None,
    ) -> None:
        super().__init__()
        num_outs = len(in_channels) if num_outs is None else num_outs
        self.convs = nn.ModuleList(
            ConvModule(c, out_channels, kernel_size, padding=(kernel_size - 1) // 2,
                       norm_cfg=norm_cfg, act=act)
            for c in in_channels
        )
        self.extra_convs: nn.ModuleList | None = None
        if num_outs > len(in_channels):
            self.extra_convs = nn.ModuleList()
            for i in range(len(in_channels), num_outs):
                extra_in = in_channels[-1] if i == len(in_channels) else out_channels
                self.extra_convs.append(ConvModule(
                    extra_in, out_channels, 3, stride=2, padding=1,
                    norm_cfg=norm_cfg, act=act,
                ))

    def forward(self, inputs: Feats) -> Feats:
        """Map every level to ``out_channels``; add strided extra levels."""
        outs = [conv(x) for conv, x in zip(self.convs, inputs)]
        if self.extra_convs is not None:
            for i, conv in enumerate(self.extra_convs):
                outs.append(conv(inputs[-1] if i == 0 else outs[-1]))
        return tuple(outs)


# ------------------------------------------------------------ dense heads (mmdet)
class RPNHead(nn.Module):
    """mmdet ``RPNHead``: ``rpn_conv`` (Conv2d, or Sequential of ConvModule), cls, reg."""

    def __init__(
        self,
        in_channels: int,
        feat_channels: int,
        num_base_priors: int = 3,
        num_convs: int = 1,
    ) -> None:
        super().__init__()
        self.num_convs = num_convs
        if num_convs > 1:
            self.rpn_conv: nn.Module = nn.Sequential(*(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels,
                           3, padding=1, inplace=False)
                for i in range(num_convs)
            ))
        else:
            self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, num_base_priors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, num_base_priors * 4, 1)

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level objectness and box deltas."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            x = self.rpn_conv(x)
            if self.num_convs == 1:
                x = F.relu(x)
            cls_scores.append(self.rpn_cls(x))
            bbox_preds.append(self.rpn_reg(x))
        return cls_scores, bbox_preds


class RetinaHead(nn.Module):
    """mmdet ``RetinaHead``: ``cls_convs``/``reg_convs`` towers, ``retina_cls/reg``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 4,
        num_base_priors: int = 9,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
            self.reg_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
        self.retina_cls = nn.Conv2d(
            feat_channels, num_base_priors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, num_base_priors * 4, 3, padding=1)

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level class scores and box deltas."""
        cls_scores, bbox_preds = [], []
        for x in feats:
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.retina_cls(cls_feat))
            bbox_preds.append(self.retina_reg(reg_feat))
        return cls_scores, bbox_preds


class FCOSHead(nn.Module):
    """mmdet ``FCOSHead``: GN towers, conv_cls/reg/centerness, 0-d ``scales.{i}.scale``."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        feat_channels: int,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _gn()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.reg_convs.append(
                ConvModule(chn, feat_channels, 3, padding=1, norm_cfg=norm_cfg))
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in strides)

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per-level class scores, scaled box distances and centerness."""
        cls_scores, bbox_preds, centernesses = [], [], []
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.conv_cls(cls_feat))
            bbox_preds.append(F.relu(scale(self.conv_reg(reg_feat))))
            centernesses.append(self.conv_centerness(reg_feat))
        return cls_scores, bbox_preds, centernesses


# ------------------------------------------------------------------- RoI heads
class SingleRoIExtractor(nn.Module):
    """mmdet ``SingleRoIExtractor`` placeholder (RoIAlign layers hold no params)."""

    def __init__(self, out_channels: int, featmap_strides: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.featmap_strides = tuple(featmap_strides)
        self.roi_layers = nn.ModuleList(nn.Identity() for _ in featmap_strides)


class ConvFCBBoxHead(nn.Module):
    """mmdet ``ConvFCBBoxHead``: shared/cls/reg conv+fc branches, ``fc_cls``, ``fc_reg``."""

    def __init__(
        self,
        num_shared_convs: int = 0,
        num_shared_fcs: int = 0,
        num_cls_convs: int = 0,
        num_cls_fcs: int = 0,
        num_reg_convs: int = 0,
        num_reg_fcs: int = 0,
        in_channels: int = 256,
        conv_out_channels: int = 256,
        fc_out_channels: int = 1024,
        roi_feat_size: int = 7,
        num_classes: int = 80,
        reg_class_agnostic: bool = False,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv_out_channels = conv_out_channels
        self.fc_out_channels = fc_out_channels
        self.roi_feat_area = roi_feat_size * roi_feat_size
        self.norm_cfg = norm_cfg
        self.num_shared_fcs = num_shared_fcs
        # BBoxHead.__init__ registers fc_cls/fc_reg first and ConvFCBBoxHead
        # replaces them later, so they keep the first slots of named_parameters().
        self.add_module('fc_cls', None)
        self.add_module('fc_reg', None)
        self.shared_convs, self.shared_fcs, last_dim = self._add_conv_fc_branch(
            num_shared_convs, num_shared_fcs, in_channels, True)
        self.shared_out_channels = last_dim
        self.cls_convs, self.cls_fcs, cls_dim = self._add_conv_fc_branch(
            num_cls_convs, num_cls_fcs, last_dim)
        self.reg_convs, self.reg_fcs, reg_dim = self._add_conv_fc_branch(
            num_reg_convs, num_reg_fcs, last_dim)
        if num_shared_fcs == 0:
            if num_cls_fcs == 0:
                cls_dim *= self.roi_feat_area
            if num_reg_fcs == 0:
                reg_dim *= self.roi_feat_area
        self.relu = nn.ReLU(inplace=True)
        self.fc_cls = nn.Linear(cls_dim, num_classes + 1)
        out_dim_reg = 4 if reg_class_agnostic else 4 * num_classes
        self.fc_reg = nn.Linear(reg_dim, out_dim_reg)

    def _add_conv_fc_branch(
        self, num_convs: int, num_fcs: int, in_channels: int, is_shared: bool = False
    ) -> tuple[nn.ModuleList, nn.ModuleList, int]:
        """Build one conv+fc branch, as mmdet does."""
        last_dim = in_channels
        convs = nn.ModuleList()
        for i in range(num_convs):
            chn = last_dim if i == 0 else self.conv_out_channels
            convs.append(ConvModule(chn, self.conv_out_channels, 3, padding=1,
                                    norm_cfg=self.norm_cfg))
        if num_convs > 0:
            last_dim = self.conv_out_channels
        fcs = nn.ModuleList()
        if num_fcs > 0:
            if is_shared or self.num_shared_fcs == 0:
                last_dim *= self.roi_feat_area
            for i in range(num_fcs):
                fc_in = last_dim if i == 0 else self.fc_out_channels
                fcs.append(nn.Linear(fc_in, self.fc_out_channels))
            last_dim = self.fc_out_channels
        return convs, fcs, last_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Class scores and box deltas from pooled RoI features (N, C, 7, 7)."""
        for conv in self.shared_convs:
            x = conv(x)
        if len(self.shared_fcs) > 0:
            x = x.flatten(1)
            for fc in self.shared_fcs:
                x = self.relu(fc(x))
        x_cls, x_reg = x, x
        for conv in self.cls_convs:
            x_cls = conv(x_cls)
        if x_cls.dim() > 2:
            x_cls = x_cls.flatten(1)
        for fc in self.cls_fcs:
            x_cls = self.relu(fc(x_cls))
        for conv in self.reg_convs:
            x_reg = conv(x_reg)
        if x_reg.dim() > 2:
            x_reg = x_reg.flatten(1)
        for fc in self.reg_fcs:
            x_reg = self.relu(fc(x_reg))
        return self.fc_cls(x_cls), self.fc_reg(x_reg)


class Shared2FCBBoxHead(ConvFCBBoxHead):
    """mmdet ``Shared2FCBBoxHead``: ``shared_fcs.0/1``, ``fc_cls``, ``fc_reg``."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(num_shared_fcs=2, fc_out_channels=fc_out_channels, **kwargs)


class Shared4Conv1FCBBoxHead(ConvFCBBoxHead):
    """mmdet ``Shared4Conv1FCBBoxHead``: 4 normed ``shared_convs`` + ``shared_fcs.0``."""

    def __init__(self, fc_out_channels: int = 1024, **kwargs: Any) -> None:
        super().__init__(num_shared_convs=4, num_shared_fcs=1,
                         fc_out_channels=fc_out_channels, **kwargs)


class FCNMaskHead(nn.Module):
    """mmdet ``FCNMaskHead``: ``convs.{i}``, ``upsample`` (deconv), ``conv_logits``."""

    def __init__(
        self,
        num_convs: int = 4,
        in_channels: int = 256,
        conv_out_channels: int = 256,
        num_classes: int = 80,
        class_agnostic: bool = False,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels,
                       conv_out_channels, 3, padding=1, norm_cfg=norm_cfg)
            for i in range(num_convs)
        )
        upsample_in = conv_out_channels if num_convs > 0 else in_channels
        self.upsample = nn.ConvTranspose2d(
            upsample_in, conv_out_channels, kernel_size=2, stride=2)
        out_channels = 1 if class_agnostic else num_classes
        self.conv_logits = nn.Conv2d(conv_out_channels, out_channels, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Mask logits from pooled RoI features (N, C, 14, 14)."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(self.relu(self.upsample(x)))


class StandardRoIHead(nn.Module):
    """mmdet ``StandardRoIHead``: ``bbox_head`` and optional ``mask_head``."""

    def __init__(
        self,
        bbox_head: nn.Module,
        mask_head: nn.Module | None = None,
        out_channels: int = 256,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        self.bbox_roi_extractor = SingleRoIExtractor(out_channels, featmap_strides)
        self.bbox_head = bbox_head
        if mask_head is not None:
            self.mask_roi_extractor = SingleRoIExtractor(out_channels, featmap_strides)
            self.mask_head = mask_head


class CascadeRoIHead(nn.Module):
    """mmdet ``CascadeRoIHead``: ``bbox_head.{stage}`` and ``mask_head.{stage}``."""

    def __init__(
        self,
        bbox_heads: Sequence[nn.Module],
        mask_heads: Sequence[nn.Module] | None = None,
        out_channels: int = 256,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        self.num_stages = len(bbox_heads)
        self.bbox_roi_extractor = nn.ModuleList(
            SingleRoIExtractor(out_channels, featmap_strides) for _ in bbox_heads)
        self.bbox_head = nn.ModuleList(bbox_heads)
        if mask_heads is not None:
            self.mask_roi_extractor = nn.ModuleList(
                SingleRoIExtractor(out_channels, featmap_strides) for _ in mask_heads)
            self.mask_head = nn.ModuleList(mask_heads)


# ------------------------------------------------------------------- detectors
class TwoStageDetector(nn.Module):
    """mmdet ``TwoStageDetector``: ``backbone``, ``neck``, ``rpn_head``, ``roi_head``."""

    def __init__(
        self, backbone: nn.Module, neck: nn.Module, rpn_head: nn.Module,
        roi_head: nn.Module,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.rpn_head = rpn_head
        self.roi_head = roi_head

    def extract_feat(self, img: Tensor) -> Feats:
        """Backbone + neck features."""
        return self.neck(self.backbone(img))

    def forward(self, img: Tensor) -> tuple[Feats, Any]:
        """Neck features and RPN outputs (RoI heads need RoIAlign; not run)."""
        feats = self.extract_feat(img)
        return feats, self.rpn_head(feats)


class FasterRCNN(TwoStageDetector):
    """mmdet ``FasterRCNN``."""


class MaskRCNN(TwoStageDetector):
    """mmdet ``MaskRCNN``."""


class CascadeRCNN(TwoStageDetector):
    """mmdet ``CascadeRCNN`` (Cascade Mask R-CNN when the RoI head has masks)."""


class SingleStageDetector(nn.Module):
    """mmdet ``SingleStageDetector``: ``backbone``, ``neck``, ``bbox_head``."""

    def __init__(self, backbone: nn.Module, neck: nn.Module, bbox_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head

    def extract_feat(self, img: Tensor) -> Feats:
        """Backbone + neck features."""
        return self.neck(self.backbone(img))

    def forward(self, img: Tensor) -> Any:
        """Raw dense-head outputs."""
        return self.bbox_head(self.extract_feat(img))


class RetinaNet(SingleStageDetector):
    """mmdet ``RetinaNet``."""


class FCOS(SingleStageDetector):
    """mmdet ``FCOS``."""


class SSD(SingleStageDetector):
    """mmdet SSD (a ``SingleStageDetector`` in the real configs)."""


# ------------------------------------------------------------ MobileNetV2 / SSD
class InvertedResidual(nn.Module):
    """mmdet ``InvertedResidual``: ``expand_conv``, depthwise ``depthwise_conv``, ``linear_conv``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        with_expand_conv: bool = True,
        norm_cfg: NormCfg | None = None,
        act: str = 'ReLU6',
    ) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _bn()
        self.with_res_shortcut = stride == 1 and in_channels == out_channels
        self.with_expand_conv = with_expand_conv
        if not with_expand_conv and mid_channels != in_channels:
            raise ValueError('mid_channels must equal in_channels without expand conv')
        if with_expand_conv:
            self.expand_conv = ConvModule(
                in_channels, mid_channels, 1, norm_cfg=norm_cfg, act=act)
        self.depthwise_conv = ConvModule(
            mid_channels, mid_channels, kernel_size, stride, kernel_size // 2,
            groups=mid_channels, norm_cfg=norm_cfg, act=act,
        )
        self.linear_conv = ConvModule(
            mid_channels, out_channels, 1, norm_cfg=norm_cfg, act=None)

    def forward(self, x: Tensor) -> Tensor:
        """Expand, depthwise, project (+ residual)."""
        out = self.expand_conv(x) if self.with_expand_conv else x
        out = self.linear_conv(self.depthwise_conv(out))
        return x + out if self.with_res_shortcut else out


class MobileNetV2(nn.Module):
    """mmdet ``MobileNetV2``: ``conv1``, ``layer1``..``layer7`` of InvertedResidual, ``conv2``."""

    arch_settings = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    )

    def __init__(
        self,
        widen_factor: float = 1.0,
        out_indices: Sequence[int] = (1, 2, 4, 7),
        norm_cfg: NormCfg | None = None,
        out_channel: int | None = None,
    ) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _bn()
        self.out_indices = tuple(out_indices)
        self.in_channels = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvModule(3, self.in_channels, 3, stride=2, padding=1,
                                norm_cfg=norm_cfg, act='ReLU6')
        self.layers: list[str] = []
        self.stage_channels: list[int] = []
        for i, (expand_ratio, channel, num_blocks, stride) in enumerate(
                self.arch_settings):
            out_channels = make_divisible(channel * widen_factor, 8)
            blocks = []
            for j in range(num_blocks):
                blocks.append(InvertedResidual(
                    self.in_channels, out_channels,
                    mid_channels=round(self.in_channels * expand_ratio),
                    stride=stride if j == 0 else 1,
                    with_expand_conv=expand_ratio != 1, norm_cfg=norm_cfg,
                ))
                self.in_channels = out_channels
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.layers.append(f'layer{i + 1}')
            self.stage_channels.append(out_channels)
        if out_channel is None:
            out_channel = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        self.out_channel = out_channel
        self.conv2 = ConvModule(self.in_channels, out_channel, 1,
                                norm_cfg=norm_cfg, act='ReLU6')
        self.layers.append('conv2')
        self.stage_channels.append(out_channel)

    def forward(self, x: Tensor) -> Feats:
        """Return the feature maps of ``out_indices``."""
        x = self.conv1(x)
        return _stage_outputs(self, x, self.layers, self.out_indices)


class SSDNeck(nn.Module):
    """mmdet ``SSDNeck`` (SSDLite): ``extra_layers.{i}.0`` and depthwise-separable ``.1``."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        level_strides: Sequence[int],
        level_paddings: Sequence[int],
        last_kernel_size: int = 3,
        use_depthwise: bool = True,
        norm_cfg: NormCfg | None = None,
        act: str = 'ReLU6',
    ) -> None:
        super().__init__()
        self.extra_layers = nn.ModuleList()
        extra_channels = list(out_channels[len(in_channels):])
        for i, (out_channel, stride, padding) in enumerate(
                zip(extra_channels, level_strides, level_paddings)):
            kernel_size = last_kernel_size if i == len(extra_channels) - 1 else 3
            first = ConvModule(out_channels[len(in_channels) - 1 + i],
                               out_channel // 2, 1, norm_cfg=norm_cfg, act=act)
            if use_depthwise:
                second: nn.Module = DepthwiseSeparableConvModule(
                    out_channel // 2, out_channel, kernel_size, stride, padding,
                    norm_cfg=norm_cfg, act=act)
            else:
                second = ConvModule(out_channel // 2, out_channel, kernel_size,
                                    stride, padding, norm_cfg=norm_cfg, act=act)
            self.extra_layers.append(nn.Sequential(first, second))

    def forward(self, inputs: Feats) -> Feats:
        """Backbone levels plus the extra strided levels."""
        outs = list(inputs)
        feat = outs[-1]
        for layer in self.extra_layers:
            feat = layer(feat)
            outs.append(feat)
        return tuple(outs)


class SSDHead(nn.Module):
    """mmdet ``SSDHead`` (SSDLite): ``cls_convs.{i}``/``reg_convs.{i}`` = dw ConvModule + 1x1."""

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        num_base_priors: Sequence[int],
        use_depthwise: bool = True,
        norm_cfg: NormCfg | None = None,
        act: str = 'ReLU6',
    ) -> None:
        super().__init__()
        cls_out = num_classes + 1
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for channel, priors in zip(in_channels, num_base_priors):
            cls_layers: list[nn.Module] = []
            reg_layers: list[nn.Module] = []
            if use_depthwise:
                cls_layers.append(ConvModule(channel, channel, 3, padding=1,
                                             groups=channel, norm_cfg=norm_cfg, act=act))
                reg_layers.append(ConvModule(channel, channel, 3, padding=1,
                                             groups=channel, norm_cfg=norm_cfg, act=act))
            k, p = (1, 0) if use_depthwise else (3, 1)
            cls_layers.append(nn.Conv2d(channel, priors * cls_out, k, padding=p))
            reg_layers.append(nn.Conv2d(channel, priors * 4, k, padding=p))
            self.cls_convs.append(nn.Sequential(*cls_layers))
            self.reg_convs.append(nn.Sequential(*reg_layers))

    def forward(self, feats: Feats) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level class scores and box deltas."""
        cls_scores = [conv(x) for x, conv in zip(feats, self.cls_convs)]
        bbox_preds = [conv(x) for x, conv in zip(feats, self.reg_convs)]
        return cls_scores, bbox_preds


# -------------------------------------------------------------- transformer bricks
class FFN(nn.Module):
    """mmcv ``FFN``: ``layers.0.0`` (Linear+act+drop), ``layers.1`` (Linear)."""

    def __init__(
        self,
        embed_dims: int,
        feedforward_channels: int,
        num_fcs: int = 2,
        act: str = 'GELU',
        add_identity: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = embed_dims
        for _ in range(num_fcs - 1):
            layers.append(nn.Sequential(
                nn.Linear(in_channels, feedforward_channels),
                _build_act(act) or nn.Identity(), nn.Dropout(0.0)))
            in_channels = feedforward_channels
        layers.append(nn.Linear(feedforward_channels, embed_dims))
        layers.append(nn.Dropout(0.0))
        self.layers = nn.Sequential(*layers)
        self.dropout_layer = nn.Identity()
        self.add_identity = add_identity
        self.gamma2 = nn.Identity()

    def forward(self, x: Tensor, identity: Tensor | None = None) -> Tensor:
        """MLP with optional residual."""
        out = self.gamma2(self.layers(x))
        if not self.add_identity:
            return self.dropout_layer(out)
        return (x if identity is None else identity) + self.dropout_layer(out)


class MultiheadAttention(nn.Module):
    """mmcv ``MultiheadAttention``: wraps ``attn`` = nn.MultiheadAttention."""

    def __init__(self, embed_dims: int, num_heads: int, batch_first: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, bias=bias,
                                          batch_first=batch_first)
        self.proj_drop = nn.Dropout(0.0)
        self.dropout_layer = nn.Identity()

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
    ) -> Tensor:
        """Residual attention as mmcv computes it."""
        key = query if key is None else key
        value = key if value is None else value
        identity = query if identity is None else identity
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        out = self.attn(query, key, value, need_weights=False)[0]
        return identity + self.dropout_layer(self.proj_drop(out))


class MultiScaleDeformableAttention(nn.Module):
    """mmcv ``MultiScaleDeformableAttention``: offsets, weights, value/output proj."""

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        value_proj_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims {embed_dims} not divisible by {num_heads}')
        self.dropout = nn.Dropout(0.1)
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        value_dims = int(embed_dims * value_proj_ratio)
        self.sampling_offsets = nn.Linear(
            embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(
            embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, value_dims)
        self.output_proj = nn.Linear(value_dims, embed_dims)


def _layer_norms(embed_dims: int, count: int) -> nn.ModuleList:
    """``norms`` ModuleList of LayerNorms as in mmdet DETR layers."""
    return nn.ModuleList(build_norm_layer(_ln(), embed_dims)[1] for _ in range(count))


class DeformableDetrTransformerEncoderLayer(nn.Module):
    """mmdet encoder layer: ``self_attn`` (MSDeformAttn), ``ffn``, ``norms.0/1``."""

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int,
                 num_points: int, feedforward_channels: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dims, num_heads, num_levels, num_points)
        self.embed_dims = embed_dims
        self.ffn = FFN(embed_dims, feedforward_channels, act='ReLU')
        self.norms = _layer_norms(embed_dims, 2)


class DeformableDetrTransformerEncoder(nn.Module):
    """mmdet ``DeformableDetrTransformerEncoder``: ``layers.{i}``."""

    def __init__(self, num_layers: int, **layer_cfg: Any) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            DeformableDetrTransformerEncoderLayer(**layer_cfg)
            for _ in range(num_layers))
        self.embed_dims = self.layers[0].embed_dims


class Mask2FormerTransformerEncoder(DeformableDetrTransformerEncoder):
    """mmdet ``Mask2FormerTransformerEncoder``."""


class DetrTransformerDecoderLayer(nn.Module):
    """mmdet decoder layer: ``self_attn``, ``cross_attn``, ``ffn``, ``norms.0/1/2``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 cross_attn: nn.Module | None = None) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims, num_heads)
        self.cross_attn = (cross_attn if cross_attn is not None
                           else MultiheadAttention(embed_dims, num_heads))
        self.embed_dims = embed_dims
        self.ffn = FFN(embed_dims, feedforward_channels, act='ReLU')
        self.norms = _layer_norms(embed_dims, 3)


class Mask2FormerTransformerDecoderLayer(DetrTransformerDecoderLayer):
    """mmdet ``Mask2FormerTransformerDecoderLayer``."""


class DeformableDetrTransformerDecoderLayer(DetrTransformerDecoderLayer):
    """mmdet decoder layer with a multi-scale deformable ``cross_attn``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 num_levels: int = 4, num_points: int = 4) -> None:
        super().__init__(
            embed_dims, num_heads, feedforward_channels,
            cross_attn=MultiScaleDeformableAttention(
                embed_dims, num_heads, num_levels, num_points),
        )


class Mask2FormerTransformerDecoder(nn.Module):
    """mmdet ``Mask2FormerTransformerDecoder``: ``layers.{i}`` and ``post_norm``."""

    def __init__(self, num_layers: int, embed_dims: int, num_heads: int,
                 feedforward_channels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Mask2FormerTransformerDecoderLayer(embed_dims, num_heads,
                                               feedforward_channels)
            for _ in range(num_layers))
        self.embed_dims = embed_dims
        self.post_norm = build_norm_layer(_ln(), embed_dims)[1]


class MLP(nn.Module):
    """mmdet ``MLP``: ``layers.{i}`` Linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int,
                 num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layers with ReLU between them."""
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class DinoTransformerDecoder(nn.Module):
    """mmdet ``DinoTransformerDecoder``: ``layers``, ``ref_point_head`` (MLP), ``norm``."""

    def __init__(self, num_layers: int, embed_dims: int, num_heads: int,
                 feedforward_channels: int, num_levels: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDetrTransformerDecoderLayer(
                embed_dims, num_heads, feedforward_channels, num_levels)
            for _ in range(num_layers))
        self.embed_dims = embed_dims
        self.ref_point_head = MLP(embed_dims * 2, embed_dims, embed_dims, 2)
        self.norm = nn.LayerNorm(embed_dims)


class SinePositionalEncoding(nn.Module):
    """mmdet ``SinePositionalEncoding`` (no parameters)."""

    def __init__(self, num_feats: int, temperature: int = 10000,
                 normalize: bool = True) -> None:
        super().__init__()
        self.num_feats, self.temperature = num_feats, temperature
        self.normalize = normalize


class MSDeformAttnPixelDecoder(nn.Module):
    """mmdet ``MSDeformAttnPixelDecoder`` (Mask2Former pixel decoder)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_channels: int,
        out_channels: int,
        num_encoder_levels: int = 3,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        feedforward_channels: int = 1024,
    ) -> None:
        super().__init__()
        norm_cfg = _gn(32)
        num_inputs = len(in_channels)
        self.num_input_levels = num_inputs
        self.num_encoder_levels = num_encoder_levels
        self.input_convs = nn.ModuleList(
            ConvModule(in_channels[i], feat_channels, 1, norm_cfg=norm_cfg,
                       act=None, bias=True)
            for i in range(num_inputs - 1, num_inputs - num_encoder_levels - 1, -1))
        self.encoder = Mask2FormerTransformerEncoder(
            num_layers, embed_dims=feat_channels, num_heads=num_heads,
            num_levels=num_encoder_levels, num_points=num_points,
            feedforward_channels=feedforward_channels)
        self.postional_encoding = SinePositionalEncoding(feat_channels // 2)
        self.level_encoding = nn.Embedding(num_encoder_levels, feat_channels)
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for i in range(num_inputs - num_encoder_levels - 1, -1, -1):
            self.lateral_convs.append(ConvModule(
                in_channels[i], feat_channels, 1, bias=False, norm_cfg=norm_cfg,
                act=None))
            self.output_convs.append(ConvModule(
                feat_channels, feat_channels, 3, padding=1, bias=False,
                norm_cfg=norm_cfg))
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, 1)


class Mask2FormerHead(nn.Module):
    """mmdet ``Mask2FormerHead``: pixel decoder, transformer decoder, query embeds."""

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_channels: int,
        out_channels: int,
        num_things_classes: int = 80,
        num_stuff_classes: int = 53,
        num_queries: int = 100,
        num_transformer_feat_level: int = 3,
        num_decoder_layers: int = 9,
        encoder_ffn_channels: int = 1024,
        decoder_ffn_channels: int = 2048,
        num_heads: int = 8,
    ) -> None:
        super().__init__()
        self.num_classes = num_things_classes + num_stuff_classes
        self.num_queries = num_queries
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels, feat_channels, out_channels,
            num_encoder_levels=num_transformer_feat_level, num_heads=num_heads,
            feedforward_channels=encoder_ffn_channels)
        self.transformer_decoder = Mask2FormerTransformerDecoder(
            num_decoder_layers, feat_channels, num_heads, decoder_ffn_channels)
        self.decoder_embed_dims = feat_channels
        self.decoder_input_projs = nn.ModuleList(
            nn.Identity() for _ in range(num_transformer_feat_level))
        self.decoder_positional_encoding = SinePositionalEncoding(feat_channels // 2)
        self.query_embed = nn.Embedding(num_queries, feat_channels)
        self.query_feat = nn.Embedding(num_queries, feat_channels)
        self.level_embed = nn.Embedding(num_transformer_feat_level, feat_channels)
        self.cls_embed = nn.Linear(feat_channels, self.num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, feat_channels), nn.ReLU(inplace=True),
            nn.Linear(feat_channels, out_channels))


class MaskFormerFusionHead(nn.Module):
    """mmdet ``MaskFormerFusionHead`` (no parameters)."""


class Mask2Former(nn.Module):
    """mmdet ``Mask2Former``: ``backbone``, ``panoptic_head``, ``panoptic_fusion_head``."""

    def __init__(self, backbone: nn.Module, panoptic_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.panoptic_head = panoptic_head
        self.panoptic_fusion_head = MaskFormerFusionHead()

    def forward(self, img: Tensor) -> Feats:
        """Backbone features only (the transformer head has no forward here)."""
        return self.backbone(img)


class DINOHead(nn.Module):
    """mmdet ``DINOHead``: ``cls_branches.{i}`` and ``reg_branches.{i}.{0,2,4}``."""

    def __init__(self, num_classes: int, embed_dims: int, num_pred_layer: int,
                 num_reg_fcs: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_branches = nn.ModuleList(
            nn.Linear(embed_dims, num_classes) for _ in range(num_pred_layer))
        branches = []
        for _ in range(num_pred_layer):
            layers: list[nn.Module] = []
            for _ in range(num_reg_fcs):
                layers += [nn.Linear(embed_dims, embed_dims), nn.ReLU()]
            layers.append(nn.Linear(embed_dims, 4))
            branches.append(nn.Sequential(*layers))
        self.reg_branches = nn.ModuleList(branches)


class CdnQueryGenerator(nn.Module):
    """mmdet ``CdnQueryGenerator``: ``label_embedding`` (denoising queries)."""

    def __init__(self, num_classes: int, embed_dims: int) -> None:
        super().__init__()
        self.num_classes, self.embed_dims = num_classes, embed_dims
        self.label_embedding = nn.Embedding(num_classes, embed_dims)


class DINO(nn.Module):
    """mmdet ``DINO``: backbone, neck, bbox_head, encoder, decoder, raw ``level_embed``."""

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        embed_dims: int,
        num_classes: int = 80,
        num_queries: int = 900,
        num_feature_levels: int = 5,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        ffn_channels: int = 2048,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = DINOHead(num_classes, embed_dims, num_decoder_layers + 1)
        self.num_queries = num_queries
        self.positional_encoding = SinePositionalEncoding(embed_dims // 2)
        self.encoder = DeformableDetrTransformerEncoder(
            num_encoder_layers, embed_dims=embed_dims, num_heads=num_heads,
            num_levels=num_feature_levels, num_points=num_points,
            feedforward_channels=ffn_channels)
        self.decoder = DinoTransformerDecoder(
            num_decoder_layers, embed_dims, num_heads, ffn_channels,
            num_feature_levels)
        self.embed_dims = embed_dims
        self.query_embedding = nn.Embedding(num_queries, embed_dims)
        self.level_embed = nn.Parameter(torch.zeros(num_feature_levels, embed_dims))
        nn.init.normal_(self.level_embed)
        self.memory_trans_fc = nn.Linear(embed_dims, embed_dims)
        self.memory_trans_norm = nn.LayerNorm(embed_dims)
        self.dn_query_generator = CdnQueryGenerator(num_classes, embed_dims)

    def forward(self, img: Tensor) -> Feats:
        """Backbone + neck features only (the transformer has no forward here)."""
        return self.neck(self.backbone(img))


# ------------------------------------------------------------------------ Swin
class PatchEmbed(nn.Module):
    """mmcv/mmdet/mmseg ``PatchEmbed``: ``projection`` conv and optional ``norm``."""

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: int = 768,
        kernel_size: int = 16,
        stride: int | None = None,
        norm_cfg: NormCfg | None = None,
    ) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        self.kernel_size, self.stride = kernel_size, stride
        self.embed_dims = embed_dims
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride)
        self.norm = None if norm_cfg is None else build_norm_layer(norm_cfg, embed_dims)[1]

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Return (B, L, C) tokens and the (H, W) grid ('corner' padding)."""
        h, w = x.shape[-2:]
        pad_h = (self.stride - h % self.stride) % self.stride
        pad_w = (self.stride - w % self.stride) % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


class PatchMerging(nn.Module):
    """mmdet Swin ``PatchMerging``: ``norm`` (4C) and ``reduction`` (4C -> 2C, no bias)."""

    def __init__(self, in_channels: int, out_channels: int,
                 norm_cfg: NormCfg | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.sampler = nn.Unfold(kernel_size=2, dilation=1, padding=0, stride=2)
        sample_dim = 4 * in_channels
        self.norm = build_norm_layer(norm_cfg or _ln(), sample_dim)[1]
        self.reduction = nn.Linear(sample_dim, out_channels, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        """2x2 patch merge of (B, H*W, C) tokens."""
        b, _, c = x.shape
        h, w = hw
        x = x.view(b, h, w, c).permute(0, 3, 1, 2)
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        x = self.sampler(x).transpose(1, 2)
        out_hw = ((h + 1) // 2, (w + 1) // 2)
        return self.reduction(self.norm(x)), out_hw


@lru_cache(maxsize=16)
def _swin_relative_position_index(window_size: int) -> Tensor:
    """mmdet ``WindowMSA`` relative position index for a square window."""
    wh = ww = window_size
    seq1 = torch.arange(0, (2 * ww - 1) * wh, 2 * ww - 1)
    seq2 = torch.arange(0, ww, 1)
    coords = (seq1[:, None] + seq2[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1).contiguous()


class WindowMSA(nn.Module):
    """mmdet ``WindowMSA``: ``relative_position_bias_table``, ``qkv``, ``proj``."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.window_size = (window_size, window_size)
        self.scale = (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer('relative_position_index',
                             _swin_relative_position_index(window_size).clone())
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(0.0)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention inside windows of (num_windows*B, N, C) tokens."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(self.softmax(attn))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class ShiftWindowMSA(nn.Module):
    """mmdet ``ShiftWindowMSA``: (shifted) window attention ``w_msa``."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int,
                 shift_size: int = 0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias)
        self.drop = nn.Identity()

    def _partition(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (num_windows*B, ws, ws, C)."""
        b, h, w, c = x.shape
        ws = self.window_size
        x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
        return x.contiguous().view(-1, ws, ws, c)

    def _reverse(self, windows: Tensor, h: int, w: int) -> Tensor:
        """(num_windows*B, ws, ws, C) -> (B, H, W, C)."""
        ws = self.window_size
        b = int(windows.shape[0] / (h * w / ws / ws))
        x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, h, w, -1)

    def forward(self, query: Tensor, hw: tuple[int, int]) -> Tensor:
        """Shifted-window attention on (B, H*W, C) tokens."""
        b, _, c = query.shape
        h, w = hw
        ws, s = self.window_size, self.shift_size
        query = query.view(b, h, w, c)
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        query = F.pad(query, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = query.shape[1], query.shape[2]
        attn_mask = None
        if s > 0:
            query = torch.roll(query, shifts=(-s, -s), dims=(1, 2))
            img_mask = torch.zeros((1, hp, wp, 1), device=query.device)
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                    img_mask[:, hs, wsl, :] = cnt
                    cnt += 1
            mask_windows = self._partition(img_mask).view(-1, ws * ws)
            attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
            attn_mask = attn_mask.masked_fill(attn_mask != 0, -100.0)
            attn_mask = attn_mask.masked_fill(attn_mask == 0, 0.0)
        windows = self._partition(query).view(-1, ws * ws, c)
        windows = self.w_msa(windows, mask=attn_mask).view(-1, ws, ws, c)
        x = self._reverse(windows, hp, wp)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = x[:, :h, :w, :].contiguous().view(b, h * w, c)
        return self.drop(x)


class SwinBlock(nn.Module):
    """mmdet ``SwinBlock``: ``norm1``, ``attn`` (ShiftWindowMSA), ``norm2``, ``ffn``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 window_size: int = 7, shift: bool = False,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(_ln(), embed_dims)[1]
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size,
                                   window_size // 2 if shift else 0, qkv_bias)
        self.norm2 = build_norm_layer(_ln(), embed_dims)[1]
        self.ffn = FFN(embed_dims, feedforward_channels, act='GELU')

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """Pre-norm attention and FFN with residuals."""
        x = x + self.attn(self.norm1(x), hw)
        return self.ffn(self.norm2(x), identity=x)


class SwinBlockSequence(nn.Module):
    """mmdet ``SwinBlockSequence``: ``blocks.{i}`` and ``downsample`` (PatchMerging)."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 depth: int, window_size: int = 7,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, feedforward_channels, window_size,
                      shift=i % 2 == 1)
            for i in range(depth))
        self.downsample = downsample

    def forward(
        self, x: Tensor, hw: tuple[int, int]
    ) -> tuple[Tensor, tuple[int, int], Tensor, tuple[int, int]]:
        """Run the blocks; return (downsampled, its hw, stage output, hw)."""
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x, hw, x, hw
        x_down, down_hw = self.downsample(x, hw)
        return x_down, down_hw, x, hw


class SwinTransformer(nn.Module):
    """mmdet ``SwinTransformer``: ``patch_embed``, ``stages.{i}``, ``norm{i}`` outputs."""

    def __init__(
        self,
        pretrain_img_size: int = 224,
        embed_dims: int = 96,
        patch_size: int = 4,
        window_size: int = 7,
        mlp_ratio: int = 4,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        out_indices: Sequence[int] = (0, 1, 2, 3),
        use_abs_pos_embed: bool = False,
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.use_abs_pos_embed = use_abs_pos_embed
        self.pretrain_img_size = pretrain_img_size
        self.patch_size = patch_size
        self.frozen_stages = frozen_stages
        self.patch_embed = PatchEmbed(3, embed_dims, patch_size, norm_cfg=_ln())
        if use_abs_pos_embed:
            num_patches = (pretrain_img_size // patch_size) ** 2
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros((1, num_patches, embed_dims)))
        self.drop_after_pos = nn.Dropout(0.0)
        self.stages = nn.ModuleList()
        in_channels = embed_dims
        for i, depth in enumerate(depths):
            downsample = None
            if i < len(depths) - 1:
                downsample = PatchMerging(in_channels, 2 * in_channels, _ln())
            self.stages.append(SwinBlockSequence(
                in_channels, num_heads[i], mlp_ratio * in_channels, depth,
                window_size, downsample))
            if downsample is not None:
                in_channels = downsample.out_channels
        self.num_features = [embed_dims * 2**i for i in range(len(depths))]
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(_ln(), self.num_features[i])[1])
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        """Freeze patch embedding and the first stages (mmdet semantics)."""
        if self.frozen_stages >= 0:
            _freeze(self.patch_embed)
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            if i - 1 in self.out_indices:
                _freeze(getattr(self, f'norm{i - 1}'))
            _freeze(self.stages[i - 1])

    def forward(self, x: Tensor) -> Feats:
        """Return NCHW feature maps of ``out_indices``."""
        x, hw = self.patch_embed(x)
        if self.use_abs_pos_embed:
            side = self.pretrain_img_size // self.patch_size
            pos = self.absolute_pos_embed
            if hw != (side, side):
                pos = pos.view(1, side, side, -1).permute(0, 3, 1, 2)
                pos = F.interpolate(pos, size=hw, mode='bicubic', align_corners=False)
                pos = pos.flatten(2).transpose(1, 2)
            x = x + pos
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw, out, out_hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(out)
                out = out.view(-1, *out_hw, self.num_features[i]).permute(0, 3, 1, 2)
                outs.append(out.contiguous())
        return tuple(outs)


# ---------------------------------------------------------------------- ViTDet
class ViTDetPatchEmbed(nn.Module):
    """ViTDet ``PatchEmbed``: a single ``proj`` conv, NHWC output."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """Patchify to (B, H, W, C)."""
        return self.proj(x).permute(0, 2, 3, 1)


def _get_rel_pos(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """ViTDet ``get_rel_pos``: interpolate and gather relative embeddings."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist, mode='linear',
        ).reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class Attention(nn.Module):
    """ViTDet ``Attention``: ``qkv``, ``proj``, decomposed ``rel_pos_h``/``rel_pos_w``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 use_rel_pos: bool = True,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError('input_size is required with use_rel_pos')
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """Global attention over an (B, H, W, C) grid."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            rh = _get_rel_pos(h, h, self.rel_pos_h)
            rw = _get_rel_pos(w, w, self.rel_pos_w)
            r_q = q.reshape(-1, h, w, q.shape[-1])
            rel_h = torch.einsum('bhwc,hkc->bhwk', r_q, rh)
            rel_w = torch.einsum('bhwc,wkc->bhwk', r_q, rw)
            attn = (attn.view(-1, h, w, h, w) + rel_h[:, :, :, :, None]
                    + rel_w[:, :, :, None, :]).view(-1, h * w, h * w)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4)
        return self.proj(x.reshape(b, h, w, -1))


class Mlp(nn.Module):
    """ViTDet ``Mlp``: ``fc1``, GELU, ``fc2``."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: Tensor) -> Tensor:
        """fc1 -> GELU -> fc2."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """ViTDet ``Block``: ``norm1``, ``attn``, ``norm2``, ``mlp``; windowed or global."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 use_rel_pos: bool = True, window_size: int = 0,
                 input_size: tuple[int, int] = (64, 64)) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(_ln(1e-6), dim)[1]
        self.attn = Attention(
            dim, num_heads, use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size))
        self.drop_path = nn.Identity()
        self.norm2 = build_norm_layer(_ln(1e-6), dim)[1]
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        """(Windowed) attention and MLP with residuals on (B, H, W, C)."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            b, h, w, c = x.shape
            ws = self.window_size
            pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            hp, wp = h + pad_h, w + pad_w
            x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            x = self.attn(x.reshape(-1, ws, ws, c))
            x = x.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, hp, wp, -1)[:, :h, :w, :]
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """mmdet ViTDet ``ViT``: ``patch_embed.proj``, raw ``pos_embed``, ``blocks.{i}``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        use_rel_pos: bool = True,
        window_size: int = 14,
        window_block_indexes: Sequence[int] = (0, 1, 3, 4, 6, 7, 9, 10),
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
    ) -> None:
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.patch_embed = ViTDetPatchEmbed(patch_size, 3, embed_dim)
        num_patches = (pretrain_img_size // patch_size) ** 2
        num_positions = num_patches + 1 if pretrain_use_cls_token else num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        grid = img_size // patch_size
        windowed = set(window_block_indexes)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, use_rel_pos,
                  window_size if i in windowed else 0, (grid, grid))
            for i in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """Return the last (B, C, H, W) feature map."""
        x = self.patch_embed(x)
        pos = self.pos_embed[:, 1:] if self.pretrain_use_cls_token else self.pos_embed
        size = int(math.sqrt(pos.shape[1]))
        h, w = x.shape[1], x.shape[2]
        pos = pos.reshape(1, size, size, -1)
        if (size, size) != (h, w):
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode='bicubic',
                                align_corners=False).permute(0, 2, 3, 1)
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class SimpleFPN(nn.Module):
    """mmdet ViTDet ``SimpleFPN``: ``fpn1``/``fpn2`` deconvs, lateral/fpn ConvModules."""

    def __init__(self, backbone_channel: int, in_channels: Sequence[int],
                 out_channels: int, num_outs: int,
                 norm_cfg: NormCfg | None = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='LN2d')
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        c = backbone_channel
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 2, 2),
            build_norm_layer(norm_cfg, c // 2)[1],
            nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, 2, 2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, 2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(self.num_ins):
            self.lateral_convs.append(ConvModule(
                in_channels[i], out_channels, 1, norm_cfg=norm_cfg, act=None,
                inplace=False))
            self.fpn_convs.append(ConvModule(
                out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                act=None, inplace=False))

    def forward(self, x: Tensor) -> Feats:
        """Build a 4-level pyramid from one map, plus max-pooled extra levels."""
        inputs = [self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x)]
        outs = [fpn(lat(inputs[i])) for i, (lat, fpn) in
                enumerate(zip(self.lateral_convs, self.fpn_convs))]
        for _ in range(self.num_outs - self.num_ins):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)


# --------------------------------------------------------------- mmseg (UPerNet)
class TransformerEncoderLayer(nn.Module):
    """mmseg ViT ``TransformerEncoderLayer``: ``ln1``, ``attn.attn``, ``ln2``, ``ffn``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 qkv_bias: bool = True, norm_cfg: NormCfg | None = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _ln(1e-6)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, embed_dims, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.attn = MultiheadAttention(embed_dims, num_heads, bias=qkv_bias)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, embed_dims, postfix=2)
        self.add_module(self.norm2_name, norm2)
        self.ffn = FFN(embed_dims, feedforward_channels, act='GELU')

    def forward(self, x: Tensor) -> Tensor:
        """Pre-norm attention and FFN with residuals."""
        x = self.attn(getattr(self, self.norm1_name)(x), identity=x)
        return self.ffn(getattr(self, self.norm2_name)(x), identity=x)


class VisionTransformer(nn.Module):
    """mmseg ``VisionTransformer``: ``patch_embed.projection``, ``cls_token``, ``pos_embed``, ``layers``."""

    def __init__(
        self,
        img_size: int = 512,
        patch_size: int = 16,
        embed_dims: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: int = 4,
        out_indices: Sequence[int] = (2, 5, 8, 11),
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(3, embed_dims, patch_size)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dims))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop_after_pos = nn.Dropout(0.0)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dims, num_heads, mlp_ratio * embed_dims)
            for _ in range(num_layers))
        self.final_norm = final_norm
        if final_norm:
            self.norm1_name, norm1 = build_norm_layer(_ln(1e-6), embed_dims, postfix=1)
            self.add_module(self.norm1_name, norm1)

    def forward(self, x: Tensor) -> Feats:
        """Return NCHW maps of ``out_indices`` (cls token dropped)."""
        b = x.shape[0]
        x, (h, w) = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        pos = self.pos_embed
        side = self.img_size // self.patch_size
        if (h, w) != (side, side):
            grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode='bicubic', align_corners=False)
            pos = torch.cat((pos[:, :1], grid.flatten(2).transpose(1, 2)), dim=1)
        x = self.drop_after_pos(x + pos)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = getattr(self, self.norm1_name)(x)
            if i in self.out_indices:
                outs.append(x[:, 1:].transpose(1, 2).reshape(b, -1, h, w))
        return tuple(outs)


class MultiLevelNeck(nn.Module):
    """mmseg ``MultiLevelNeck``: ``lateral_convs`` and ``convs`` with rescaling."""

    def __init__(self, in_channels: Sequence[int], out_channels: int,
                 scales: Sequence[float] = (0.5, 1, 2, 4)) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, act=None) for c in in_channels)
        self.convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, act=None)
            for _ in self.scales)

    def forward(self, inputs: Feats) -> Feats:
        """Rescale each level by ``scales``."""
        feats = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        if len(feats) == 1:
            feats = feats * len(self.scales)
        return tuple(
            conv(F.interpolate(x, scale_factor=s, mode='bilinear'))
            for conv, x, s in zip(self.convs, feats, self.scales))


class PPM(nn.ModuleList):
    """mmseg ``PPM``: ``{i}.1`` = ConvModule after adaptive pooling."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int,
                 norm_cfg: NormCfg) -> None:
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s),
                          ConvModule(in_channels, channels, 1, norm_cfg=norm_cfg))
            for s in pool_scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Pool, project and upsample back."""
        return [F.interpolate(m(x), size=x.shape[2:], mode='bilinear') for m in self]


class UPerHead(nn.Module):
    """mmseg ``UPerHead``: ``conv_seg``, ``psp_modules``, ``bottleneck``, FPN convs."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6),
                 norm_cfg: NormCfg | None = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _sync_bn()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels, norm_cfg)
        self.bottleneck = ConvModule(
            in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1,
            norm_cfg=norm_cfg)
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, channels, 1, norm_cfg=norm_cfg, inplace=False)
            for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, padding=1, norm_cfg=norm_cfg,
                       inplace=False)
            for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(
            len(in_channels) * channels, channels, 3, padding=1, norm_cfg=norm_cfg)

    def forward(self, inputs: Feats) -> Tensor:
        """UPerNet fusion and per-pixel logits."""
        x = inputs[-1]
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode='bilinear')
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        outs = [outs[0]] + [
            F.interpolate(o, size=outs[0].shape[2:], mode='bilinear') for o in outs[1:]]
        feats = self.fpn_bottleneck(torch.cat(outs, dim=1))
        return self.conv_seg(self.dropout(feats))


class FCNHead(nn.Module):
    """mmseg ``FCNHead``: ``conv_seg`` and ``convs.{i}``."""

    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 num_convs: int = 1, norm_cfg: NormCfg | None = None,
                 in_index: int = -1) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else _sync_bn()
        self.in_index = in_index
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(0.1)
        self.convs = nn.Sequential(*(
            ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1,
                       norm_cfg=norm_cfg)
            for i in range(num_convs)))

    def forward(self, inputs: Feats) -> Tensor:
        """Per-pixel logits from ``inputs[in_index]``."""
        return self.conv_seg(self.dropout(self.convs(inputs[self.in_index])))


class EncoderDecoder(nn.Module):
    """mmseg ``EncoderDecoder``: backbone, neck, decode_head, auxiliary_head."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module,
                 neck: nn.Module | None = None,
                 auxiliary_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if neck is not None:
            self.neck = neck
        self.decode_head = decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head

    def forward(self, img: Tensor) -> Tensor:
        """Decode-head logits (auxiliary head not run)."""
        feats = self.backbone(img)
        if hasattr(self, 'neck'):
            feats = self.neck(feats)
        return self.decode_head(feats)


# -------------------------------------------------------------------- builders
def _swin_l(width: float, window_size: int, pretrain_img_size: int,
            use_abs_pos_embed: bool = False, frozen_stages: int = -1) -> SwinTransformer:
    """Swin-L (embed 192, depths 2-2-18-2, heads 6-12-24-48) at ``width``."""
    embed = 6 * _head_dim(32, width)
    return SwinTransformer(
        pretrain_img_size=pretrain_img_size, embed_dims=embed, window_size=window_size,
        depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
        use_abs_pos_embed=use_abs_pos_embed, frozen_stages=frozen_stages)


def _rpn(channels: int, num_convs: int = 1) -> RPNHead:
    """mmdet RPNHead with 3 anchors per location."""
    return RPNHead(channels, channels, 3, num_convs)


def _two_stage_resnet(
    cls: type[TwoStageDetector], depth: int, width: float, num_classes: int,
    with_mask: bool, frozen_stages: int, norm: str,
) -> TwoStageDetector:
    """Faster/Mask R-CNN with a ResNet-FPN backbone."""
    backbone = ResNet(depth, base_channels=_ch(64, width), frozen_stages=frozen_stages,
                      norm_cfg=_resnet_norm(norm))
    c = _ch(256, width)
    neck = FPN(backbone.out_channels, c, 5)
    bbox_head = Shared2FCBBoxHead(in_channels=c, fc_out_channels=_ch(1024, width),
                                  num_classes=num_classes)
    mask_head = (FCNMaskHead(4, c, c, num_classes) if with_mask else None)
    return cls(backbone, neck, _rpn(c), StandardRoIHead(bbox_head, mask_head, c))


def faster_rcnn_r50_fpn(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                        frozen_stages: int = 1, norm: str = 'BN') -> nn.Module:
    """Faster R-CNN R-50-FPN (mmdet ``faster-rcnn_r50_fpn_1x_coco``)."""
    return _two_stage_resnet(FasterRCNN, 50, width, num_classes, False,
                             frozen_stages, norm)


def mask_rcnn_r101_fpn(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                       frozen_stages: int = 1, norm: str = 'BN') -> nn.Module:
    """Mask R-CNN R-101-FPN (mmdet ``mask-rcnn_r101_fpn_1x_coco``)."""
    return _two_stage_resnet(MaskRCNN, 101, width, num_classes, True,
                             frozen_stages, norm)


def retinanet_r50_fpn(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                      frozen_stages: int = 1, norm: str = 'BN') -> nn.Module:
    """RetinaNet R-50-FPN (mmdet ``retinanet_r50_fpn_1x_coco``)."""
    backbone = ResNet(50, base_channels=_ch(64, width), frozen_stages=frozen_stages,
                      norm_cfg=_resnet_norm(norm))
    c = _ch(256, width)
    neck = FPN(backbone.out_channels, c, 5, start_level=1, add_extra_convs='on_input')
    return RetinaNet(backbone, neck, RetinaHead(num_classes, c, c))


def fcos_r50_caffe_fpn_gn(width: float = DEFAULT_WIDTH,
                          num_classes: int = 80) -> nn.Module:
    """FCOS R-50-caffe FPN, GN head (``fcos_r50-caffe_fpn_gn-head_1x_coco``)."""
    backbone = ResNet(50, base_channels=_ch(64, width), style='caffe',
                      frozen_stages=1, norm_cfg=_bn(requires_grad=False))
    c = _ch(256, width)
    neck = FPN(backbone.out_channels, c, 5, start_level=1,
               add_extra_convs='on_output', relu_before_extra_convs=True)
    head = FCOSHead(num_classes, c, _ch(256, width, 32))
    return FCOS(backbone, neck, head)


def cascade_mask_rcnn_swin_l(
    width: float = DEFAULT_WIDTH, num_classes: int = 80, window_size: int = 7,
    bbox_head: str = 'shared2fc', use_abs_pos_embed: bool = False,
) -> nn.Module:
    """Cascade Mask R-CNN, Swin-L FPN, 3 cascade bbox heads and 3 FCN mask heads."""
    backbone = _swin_l(width, window_size, 224, use_abs_pos_embed)
    c = _ch(256, width)
    neck = FPN(backbone.num_features, c, 5)
    heads: list[nn.Module] = []
    for _ in range(3):
        if bbox_head == 'shared2fc':
            heads.append(Shared2FCBBoxHead(
                in_channels=c, fc_out_channels=_ch(1024, width),
                num_classes=num_classes, reg_class_agnostic=True))
        elif bbox_head == '4conv1fc':
            heads.append(Shared4Conv1FCBBoxHead(
                in_channels=c, conv_out_channels=c, fc_out_channels=_ch(1024, width),
                num_classes=num_classes, reg_class_agnostic=False,
                norm_cfg=_sync_bn()))
        else:
            raise ValueError(f"bbox_head must be 'shared2fc' or '4conv1fc', "
                             f'got {bbox_head!r}')
    mask_heads = [FCNMaskHead(4, c, c, num_classes) for _ in range(3)]
    return CascadeRCNN(backbone, neck, _rpn(c), CascadeRoIHead(heads, mask_heads, c))


def mask2former_swin_l(width: float = DEFAULT_WIDTH, num_things_classes: int = 80,
                       num_stuff_classes: int = 53, num_queries: int = 200) -> nn.Module:
    """Mask2Former Swin-L panoptic (``mask2former_swin-l-p4-w12-384-in21k``)."""
    backbone = _swin_l(width, 12, 384)
    feat = _ch(256, width, 32)
    head = Mask2FormerHead(
        backbone.num_features, feat, feat, num_things_classes, num_stuff_classes,
        num_queries, encoder_ffn_channels=_ch(1024, width),
        decoder_ffn_channels=_ch(2048, width))
    return Mask2Former(backbone, head)


def dino_swin_l(width: float = DEFAULT_WIDTH, num_classes: int = 80,
                num_queries: int = 900) -> nn.Module:
    """DINO 5-scale Swin-L (``dino-5scale_swin-l_8xb2-12e_coco``)."""
    backbone = _swin_l(width, 12, 384)
    embed = _ch(256, width, 32)
    neck = ChannelMapper(backbone.num_features, embed, 1, norm_cfg=_gn(32), act=None,
                         num_outs=5)
    return DINO(backbone, neck, embed, num_classes, num_queries,
                ffn_channels=_ch(2048, width))


def vitdet_h(width: float = DEFAULT_WIDTH, num_classes: int = 80,
             depth: int = 32) -> nn.Module:
    """ViTDet ViT-H Mask R-CNN: SimpleFPN, 2-conv RPN, 4conv1fc + mask heads, LN2d."""
    embed = 16 * _head_dim(80, width)
    windowed = [i for i in range(depth) if (i + 1) % 8 != 0]
    backbone = ViT(img_size=1024, patch_size=16, embed_dim=embed, depth=depth,
                   num_heads=16, use_rel_pos=True, window_size=14,
                   window_block_indexes=windowed)
    c = _ch(256, width)
    ln2d = dict(type='LN2d', requires_grad=True)
    neck = SimpleFPN(embed, [embed // 4, embed // 2, embed, embed], c, 5, ln2d)
    bbox_head = Shared4Conv1FCBBoxHead(
        in_channels=c, conv_out_channels=c, fc_out_channels=_ch(1024, width),
        num_classes=num_classes, norm_cfg=ln2d)
    mask_head = FCNMaskHead(4, c, c, num_classes, norm_cfg=ln2d)
    return MaskRCNN(backbone, neck, _rpn(c, num_convs=2),
                    StandardRoIHead(bbox_head, mask_head, c))


def mobilenet_v2_ssdlite(width: float = DEFAULT_WIDTH,
                         num_classes: int = 80) -> nn.Module:
    """SSDLite MobileNetV2 (``ssdlite_mobilenetv2-scratch_8xb24-600e_coco``)."""
    norm_cfg = _bn(eps=0.001, momentum=0.03)
    backbone = MobileNetV2(widen_factor=width, out_indices=(4, 7), norm_cfg=norm_cfg,
                           out_channel=_ch(1280, width, 8))
    in_channels = (backbone.stage_channels[4], backbone.out_channel)
    extra = tuple(_ch(c, width, 2) for c in (512, 256, 256, 128))
    out_channels = in_channels + extra
    neck = SSDNeck(in_channels, out_channels, (2, 2, 2, 2), (1, 1, 1, 1),
                   norm_cfg=norm_cfg)
    head = SSDHead(num_classes, out_channels, (6,) * 6, norm_cfg=norm_cfg)
    return SSD(backbone, neck, head)


def upernet_vit_b(width: float = DEFAULT_WIDTH, num_classes: int = 150) -> nn.Module:
    """mmseg UPerNet ViT-B/16 + MLN (``upernet_vit-b16_mln_512x512_80k_ade20k``)."""
    embed = 12 * _head_dim(64, width)
    backbone = VisionTransformer(512, 16, embed, 12, 12, 4, (2, 5, 8, 11))
    neck = MultiLevelNeck([embed] * 4, embed, (4, 2, 1, 0.5))
    decode = UPerHead([embed] * 4, _ch(512, width), num_classes)
    aux = FCNHead(embed, _ch(256, width), num_classes, in_index=3)
    return EncoderDecoder(backbone, decode, neck, aux)


BIG_5K_STAGE_BLOCKS: tuple[int, int, int, int] = (3, 36, 503, 3)


def big_5k(width: float = DEFAULT_WIDTH, num_classes: int = 80,
           stage_blocks: Sequence[int] = BIG_5K_STAGE_BLOCKS) -> nn.Module:
    """Cascade Mask R-CNN on a 545-bottleneck SyncBN ResNet: 5,002 tensors."""
    backbone = ResNet(152, base_channels=_ch(64, width), frozen_stages=1,
                      norm_cfg=_sync_bn(), stage_blocks=stage_blocks)
    c = _ch(256, width)
    neck = FPN(backbone.out_channels, c, 5)
    heads = [Shared2FCBBoxHead(in_channels=c, fc_out_channels=_ch(1024, width),
                               num_classes=num_classes, reg_class_agnostic=True)
             for _ in range(3)]
    masks = [FCNMaskHead(4, c, c, num_classes) for _ in range(3)]
    return CascadeRCNN(backbone, neck, _rpn(c), CascadeRoIHead(heads, masks, c))


# --------------------------------------------------------- optimizer configs
_SGD_002 = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001)
_SWIN_ADAMW = dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05)
_SWIN_L_DEPTHS = (2, 2, 18, 2)


def _swin_paramwise_cfg() -> dict:
    """mmdet Swin detection configs' ``paramwise_cfg``."""
    return dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.0),
        'relative_position_bias_table': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
    })


def _mask2former_swin_paramwise_cfg(depths: Sequence[int] = _SWIN_L_DEPTHS) -> dict:
    """mmdet Mask2Former Swin configs' ``paramwise_cfg`` (per-block norm keys)."""
    backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
    backbone_embed_multi = dict(lr_mult=0.1, decay_mult=0.0)
    embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
    custom_keys: dict[str, dict] = {
        'backbone': dict(lr_mult=0.1, decay_mult=1.0),
        'backbone.patch_embed.norm': dict(backbone_norm_multi),
        'backbone.norm': dict(backbone_norm_multi),
        'absolute_pos_embed': dict(backbone_embed_multi),
        'relative_position_bias_table': dict(backbone_embed_multi),
        'query_embed': dict(embed_multi),
        'query_feat': dict(embed_multi),
        'level_embed': dict(embed_multi),
    }
    custom_keys.update({
        f'backbone.stages.{stage_id}.blocks.{block_id}.norm': dict(backbone_norm_multi)
        for stage_id, num_blocks in enumerate(depths)
        for block_id in range(num_blocks)
    })
    custom_keys.update({
        f'backbone.stages.{stage_id}.downsample.norm': dict(backbone_norm_multi)
        for stage_id in range(len(depths) - 1)
    })
    return dict(custom_keys=custom_keys, norm_decay_mult=0.0)


def _vitdet_paramwise_cfg(num_layers: int = 32, decay_rate: float = 0.9) -> dict:
    """detectron2 ViTDet-H layer-wise lr decay + no-decay norms/pos_embed as custom keys."""
    embed_lr = decay_rate ** (num_layers + 1)
    custom_keys: dict[str, dict] = {
        'backbone.patch_embed': dict(lr_mult=embed_lr),
        'backbone.pos_embed': dict(lr_mult=embed_lr, decay_mult=0.0),
    }
    for i in range(num_layers):
        lr_mult = decay_rate ** (num_layers - i)
        custom_keys[f'backbone.blocks.{i}.'] = dict(lr_mult=lr_mult)
        custom_keys[f'backbone.blocks.{i}.norm'] = dict(lr_mult=lr_mult, decay_mult=0.0)
    return dict(custom_keys=custom_keys, norm_decay_mult=0.0)


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: builder plus the optimizer and paramwise_cfg of its real config."""

    name: str
    builder: Callable[..., nn.Module]
    paramwise_cfg: dict | None
    optimizer: dict
    description: str


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        ZooModel(
            'faster_rcnn_r50_fpn', faster_rcnn_r50_fpn,
            dict(norm_decay_mult=0.0, bias_decay_mult=0.0), dict(_SGD_002),
            'Faster R-CNN R-50-FPN, 189 tensors; BN, frozen stem+layer1 '
            '(requires_grad=False). Real config has no paramwise_cfg; this one '
            'exercises the norm/bias rules.'),
        ZooModel(
            'mask_rcnn_r101_fpn', mask_rcnn_r101_fpn, None, dict(_SGD_002),
            'Mask R-CNN R-101-FPN, 354 tensors; frozen stem+layer1. paramwise_cfg '
            'is None as in the real config (one-group path).'),
        ZooModel(
            'retinanet_r50_fpn', retinanet_r50_fpn,
            dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
            dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
            'RetinaNet R-50-FPN (extra convs on input), 195 tensors. Real config '
            'has no paramwise_cfg; this one exercises the norm/bias rules.'),
        ZooModel(
            'fcos_r50_caffe_fpn_gn', fcos_r50_caffe_fpn_gn,
            dict(bias_lr_mult=2.0, bias_decay_mult=0.0),
            dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
            'FCOS R-50-caffe FPN GN head, 210 tensors: all backbone BN frozen '
            '(requires_grad=False), GroupNorm towers, five 0-d Scale.scale params; '
            'real paramwise_cfg.'),
        ZooModel(
            'cascade_mask_rcnn_swin_l', cascade_mask_rcnn_swin_l,
            _swin_paramwise_cfg(), dict(_SWIN_ADAMW),
            'Cascade Mask R-CNN Swin-L (depths 2-2-18-2, window 7) FPN, 3 cascade '
            'Shared2FC bbox heads + 3 FCN mask heads: 415 tensors '
            "(bbox_head='4conv1fc' gives the Swin-repo SyncBN 4conv1fc heads: 445)."),
        ZooModel(
            'mask2former_swin_l', mask2former_swin_l,
            _mask2former_swin_paramwise_cfg(),
            dict(type='AdamW', lr=0.0001, weight_decay=0.05, eps=1e-8,
                 betas=(0.9, 0.999)),
            'Mask2Former Swin-L panoptic (window 12, 200 queries), 625 tensors; '
            'MSDeformAttn pixel decoder, GN convs, Embedding queries; the real '
            'per-block-norm custom_keys.'),
        ZooModel(
            'vitdet_h', vitdet_h, _vitdet_paramwise_cfg(),
            dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.1),
            'ViTDet ViT-H (32 blocks, rel_pos_h/w per block, 4 global blocks) Mask '
            'R-CNN with SimpleFPN and LN2d norms (ConvModule attr "norm_layer"), 525 '
            'tensors. mmdet uses LayerDecayOptimizerConstructor(decay_rate=0.7, '
            'num_layers=12 for ViT-B); this paramwise_cfg expresses detectron2 '
            "ViT-H's layer decay 0.9 as custom_keys."),
        ZooModel(
            'dino_swin_l', dino_swin_l,
            dict(custom_keys={'backbone': dict(lr_mult=0.1)}),
            dict(type='AdamW', lr=0.0001, weight_decay=0.0001),
            'DINO 5-scale Swin-L, 900 queries, 645 tensors: ChannelMapper GN neck, '
            'deformable encoder/decoder, raw level_embed, 7 cls/reg branches.'),
        ZooModel(
            'mobilenet_v2_ssdlite', mobilenet_v2_ssdlite,
            dict(norm_decay_mult=0.0, dwconv_decay_mult=0.0),
            dict(type='SGD', lr=0.015, momentum=0.9, weight_decay=4.0e-5),
            'SSDLite MobileNetV2, 252 tensors: depthwise Conv2d (groups == '
            'in_channels) + BN everywhere. Real config has no paramwise_cfg; this '
            'one exercises the dwconv/norm rules.'),
        ZooModel(
            'upernet_vit_b', upernet_vit_b,
            dict(custom_keys={'pos_embed': dict(decay_mult=0.0),
                              'cls_token': dict(decay_mult=0.0),
                              'norm': dict(decay_mult=0.0)}),
            dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
            'mmseg UPerNet ViT-B/16 + MultiLevelNeck, 207 tensors: cls_token, '
            'pos_embed, nn.MultiheadAttention in_proj_*, SyncBN decode heads; LN '
            "layers are named ln1/ln2, so the real 'norm' key never matches them."),
        ZooModel(
            'big_5k', big_5k,
            dict(norm_decay_mult=0.0, bias_lr_mult=2.0, bias_decay_mult=0.0,
                 custom_keys={'backbone': dict(lr_mult=0.1)}),
            dict(_SGD_002),
            'Cascade Mask R-CNN on a ResNet with stage_blocks (3, 36, 503, 3) and '
            'SyncBN: 5,002 tensors.'),
    )
}


def build(name: str, width: float = DEFAULT_WIDTH, **kwargs: Any) -> nn.Module:
    """Build ``MODELS[name]`` at channel multiplier ``width``."""
    try:
        entry = MODELS[name]
    except KeyError:
        raise KeyError(f'unknown zoo model {name!r}; known: {sorted(MODELS)}') from None
    return entry.builder(width=width, **kwargs)


def count_tensors(model: nn.Module) -> int:
    """Number of distinct parameter tensors of ``model``."""
    return sum(1 for _ in model.parameters())


def count_numel(model: nn.Module) -> int:
    """Total number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- synthetic
class SyntheticBlock(nn.Module):
    """A 4-tensor block of :func:`synthetic`; the layer kinds cycle per stage."""

    KINDS = (('conv', 'bn'), ('dwconv', 'gn'), ('fc', 'norm'))

    def __init__(self, kind: int, channels: int = 4) -> None:
        super().__init__()
        self.kind = kind
        if kind == 0:
            self.conv = nn.Conv2d(channels, channels, 1)
            # No running-stat buffers: three fewer tensors to allocate per block.
            self.bn = nn.BatchNorm2d(channels, track_running_stats=False)
        elif kind == 1:
            self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
            self.gn = nn.GroupNorm(2, channels)
        elif kind == 2:
            self.fc = nn.Linear(channels, channels)
            self.norm = nn.LayerNorm(channels)
        else:
            raise ValueError(f'kind must be 0, 1 or 2, got {kind}')

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block's two layers to an NCHW tensor."""
        layer_name, norm_name = self.KINDS[self.kind]
        layer, norm = self._modules[layer_name], self._modules[norm_name]
        if self.kind == 2:
            return norm(layer(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return norm(layer(x))


class SyntheticStage(nn.Module):
    """A stage of :func:`synthetic`: ``blocks.{j}``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        """Run the blocks in order."""
        for block in self.blocks:
            x = block(x)
        return x


class SyntheticNet(nn.Module):
    """Giant model of :func:`synthetic`: ``stem``, ``stages.{i}.blocks.{j}``, ``head``."""

    def __init__(self, with_ends: bool = True, channels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1) if with_ends else None
        self.stages = nn.ModuleList()
        self.head = nn.Linear(channels, 10) if with_ends else None
        self.scales = nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        """Stem, stages, global pool, head."""
        if self.stem is None or self.head is None:
            return x
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        out = self.head(x.mean(dim=(2, 3)))
        for scale in self.scales:
            out = scale(out)
        return out


def _shell_template(proto: nn.Module) -> tuple[type, dict[str, Any], tuple[str, ...]]:
    """Capture a module's ``__dict__`` and which entries are containers to copy."""
    state = dict(proto.__dict__)
    containers = tuple(
        k for k, v in state.items()
        if isinstance(v, (dict, set, list))
        and k not in ('_parameters', '_buffers', '_modules'))
    return type(proto), state, containers


def _new_shell(
    template: tuple[type, dict[str, Any], tuple[str, ...]],
    params: dict[str, nn.Parameter],
    buffers: dict[str, Tensor | None],
    modules: dict[str, nn.Module],
) -> nn.Module:
    """Create a module of the template's class without running ``__init__``."""
    cls, state, containers = template
    module = object.__new__(cls)
    new_state = state.copy()
    for key in containers:
        new_state[key] = state[key].copy()
    new_state['_parameters'] = params
    new_state['_buffers'] = buffers
    new_state['_modules'] = modules
    object.__setattr__(module, '__dict__', new_state)
    return module


def _fast_blocks(kind: int, count: int) -> list[nn.Module]:
    """``count`` fresh SyntheticBlocks of ``kind`` built by cloning a prototype.

    ``__init__`` (and its kaiming init) is skipped: each module is a copy of the
    prototype's ``__dict__`` with fresh hook containers and fresh parameters, so
    modules stay independent (hooks, state_dict, ``.to()``) at a few µs each.
    """
    proto = SyntheticBlock(kind)
    block_tpl = _shell_template(proto)
    leaves = []
    for leaf_name, leaf in proto._modules.items():
        assert leaf is not None
        shapes = [(pname, tuple(p.shape), pname == 'weight' and leaf_name in
                   ('bn', 'gn', 'norm')) for pname, p in leaf._parameters.items()]
        buffers = [(bname, b) for bname, b in leaf._buffers.items()]
        leaves.append((leaf_name, _shell_template(leaf), shapes, buffers))
    blocks: list[nn.Module] = []
    # One torch op per tensor: small-op dispatch (~2-5 µs) dominates the cost.
    normal, make_param, param_cls = torch.normal, torch.Tensor._make_subclass, nn.Parameter
    for _ in range(count):
        children: dict[str, nn.Module] = {}
        for leaf_name, tpl, shapes, buffers in leaves:
            params = {}
            for pname, shape, is_norm_weight in shapes:
                data = normal(1.0 if is_norm_weight else 0.0, 0.02, shape)
                params[pname] = make_param(param_cls, data, True)
            bufs = {bname: None if b is None else b.clone() for bname, b in buffers}
            children[leaf_name] = _new_shell(tpl, params, bufs, {})
        blocks.append(_new_shell(block_tpl, {}, {}, children))
    return blocks


def synthetic(num_tensors: int, blocks_per_stage: int = 64,
              seed: int = 0) -> SyntheticNet:
    """A model with exactly ``num_tensors`` tiny parameter tensors (1M in seconds).

    Layout: ``stem`` (Conv2d, 2 tensors), ``stages.{i}.blocks.{j}`` (4 tensors
    each, ``blocks_per_stage`` per stage; stage ``i`` uses kind ``i % 3``:
    ``conv``+``bn`` (BatchNorm2d without running stats), depthwise ``dwconv``+
    ``gn``, or ``fc``+``norm`` (LayerNorm)), ``head`` (Linear, 2 tensors) and
    0-3 leftover 0-d ``scales.{k}.scale``. Values are N(0, 0.02) (norm weights
    N(1, 0.02)), deterministic for ``seed``; the global RNG is left untouched.
    """
    if num_tensors < 0:
        raise ValueError(f'num_tensors must be >= 0, got {num_tensors}')
    if blocks_per_stage < 1:
        raise ValueError(f'blocks_per_stage must be >= 1, got {blocks_per_stage}')
    with_ends = num_tensors >= 4
    body = num_tensors - 4 if with_ends else num_tensors
    num_blocks, num_scales = divmod(body, 4)
    num_stages = -(-num_blocks // blocks_per_stage)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of new container objects; collection would dominate
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = SyntheticNet(with_ends)
            sizes = [min(blocks_per_stage, num_blocks - i * blocks_per_stage)
                     for i in range(num_stages)]
            pools = [iter(_fast_blocks(kind, sum(sizes[kind::3]))) for kind in range(3)]
            for _ in range(num_scales):
                net.scales.append(Scale(1.0))
        stage_tpl = _shell_template(SyntheticStage())
        list_tpl = _shell_template(nn.ModuleList())
        stages: dict[str, nn.Module] = {}
        for i, size in enumerate(sizes):
            pool = pools[i % 3]
            blocks = {str(j): next(pool) for j in range(size)}
            stage_list = _new_shell(list_tpl, {}, {}, blocks)
            stages[str(i)] = _new_shell(stage_tpl, {}, {}, {'blocks': stage_list})
        net.stages._modules.update(stages)
    finally:
        if gc_was_enabled:
            gc.enable()
    return net
