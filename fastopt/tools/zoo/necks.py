"""Necks: FPN, ChannelMapper, SSDNeck, SimpleFPN, MultiLevelNeck."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .bricks import ConvModule, DepthwiseSeparableConvModule, Feats, NormCfg, build_norm_layer


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
