"""CNN backbones: ResNet (mmdet, with frozen stages) and MobileNetV2."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .bricks import ConvModule, Feats, NormCfg, bn_cfg, build_norm_layer, freeze, make_divisible


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
        norm_cfg = norm_cfg if norm_cfg is not None else bn_cfg()
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
        norm_cfg = norm_cfg if norm_cfg is not None else bn_cfg()
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
        norm_cfg = norm_cfg if norm_cfg is not None else bn_cfg()
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
            freeze(self.conv1)
            freeze(self.norm1)
        for i in range(1, self.frozen_stages + 1):
            freeze(getattr(self, f'layer{i}'))

    def forward(self, x: Tensor) -> Feats:
        """Return the feature maps of ``out_indices``."""
        x = self.maxpool(self.relu(self.norm1(self.conv1(x))))
        return _stage_outputs(self, x, self.res_layers, self.out_indices)


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
        norm_cfg = norm_cfg if norm_cfg is not None else bn_cfg()
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
        norm_cfg = norm_cfg if norm_cfg is not None else bn_cfg()
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
