"""Transformer backbones: Swin (mmdet), ViTDet's ViT and mmseg's VisionTransformer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bricks import FFN, Feats, MultiheadAttention, NormCfg, build_norm_layer, freeze, ln_cfg


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
        self.norm = build_norm_layer(norm_cfg or ln_cfg(), sample_dim)[1]
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
        self.norm1 = build_norm_layer(ln_cfg(), embed_dims)[1]
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size,
                                   window_size // 2 if shift else 0, qkv_bias)
        self.norm2 = build_norm_layer(ln_cfg(), embed_dims)[1]
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
        self.patch_embed = PatchEmbed(3, embed_dims, patch_size, norm_cfg=ln_cfg())
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
                downsample = PatchMerging(in_channels, 2 * in_channels, ln_cfg())
            self.stages.append(SwinBlockSequence(
                in_channels, num_heads[i], mlp_ratio * in_channels, depth,
                window_size, downsample))
            if downsample is not None:
                in_channels = downsample.out_channels
        self.num_features = [embed_dims * 2**i for i in range(len(depths))]
        for i in self.out_indices:
            self.add_module(f'norm{i}', build_norm_layer(ln_cfg(), self.num_features[i])[1])
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        """Freeze patch embedding and the first stages (mmdet semantics)."""
        if self.frozen_stages >= 0:
            freeze(self.patch_embed)
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            if i - 1 in self.out_indices:
                freeze(getattr(self, f'norm{i - 1}'))
            freeze(self.stages[i - 1])

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
        self.norm1 = build_norm_layer(ln_cfg(1e-6), dim)[1]
        self.attn = Attention(
            dim, num_heads, use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size))
        self.drop_path = nn.Identity()
        self.norm2 = build_norm_layer(ln_cfg(1e-6), dim)[1]
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


class TransformerEncoderLayer(nn.Module):
    """mmseg ViT ``TransformerEncoderLayer``: ``ln1``, ``attn.attn``, ``ln2``, ``ffn``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 qkv_bias: bool = True, norm_cfg: NormCfg | None = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else ln_cfg(1e-6)
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
            self.norm1_name, norm1 = build_norm_layer(ln_cfg(1e-6), embed_dims, postfix=1)
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
