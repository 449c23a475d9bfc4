"""Building blocks shared by the zoo's models: mmcv's norm/conv/activation bricks, scaled
channel counts, and the transformer bricks (FFN, attention, encoder/decoder layers)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_WIDTH: float = 1 / 32
"""Default channel multiplier: tiny tensors, real tensor counts."""

NormCfg = dict[str, Any]
Feats = tuple[Tensor, ...]


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """Scale ``channels`` by ``width``; round to a multiple of ``divisor`` (>= it)."""
    if width <= 0:
        raise ValueError(f'width must be > 0, got {width!r}')
    return max(divisor, round(channels * width / divisor) * divisor)


def scaled_head_dim(real_head_dim: int, width: float) -> int:
    """Scale an attention head dimension by ``width`` (at least 1)."""
    return scaled(real_head_dim, width)


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


def freeze(module: nn.Module) -> None:
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


def bn_cfg(requires_grad: bool = True, **kw: Any) -> NormCfg:
    """An mmcv ``dict(type='BN')`` norm config."""
    return dict(type='BN', requires_grad=requires_grad, **kw)


def sync_bn_cfg() -> NormCfg:
    """An mmcv ``dict(type='SyncBN')`` norm config."""
    return dict(type='SyncBN', requires_grad=True)


def gn_cfg(num_groups: int = 32) -> NormCfg:
    """An mmcv ``dict(type='GN', num_groups=32)`` norm config."""
    return dict(type='GN', num_groups=num_groups, requires_grad=True)


def ln_cfg(eps: float = 1e-5) -> NormCfg:
    """An mmcv ``dict(type='LN')`` norm config."""
    return dict(type='LN', eps=eps)


def resnet_norm_cfg(norm: str) -> NormCfg:
    """Norm config for a ResNet backbone: 'BN', 'SyncBN' or 'GN'."""
    if norm == 'BN':
        return bn_cfg()
    if norm == 'SyncBN':
        return sync_bn_cfg()
    if norm == 'GN':
        return gn_cfg()
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
    return nn.ModuleList(build_norm_layer(ln_cfg(), embed_dims)[1] for _ in range(count))


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
        self.post_norm = build_norm_layer(ln_cfg(), embed_dims)[1]


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
