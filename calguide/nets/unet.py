"""ADM (guided-diffusion) U-Net and encoder classifier with checkpoint-compatible layouts.

Module attribute names and nesting mirror openai/guided-diffusion so that the released
``*_diffusion.pt`` and ``*_classifier.pt`` files load with ``strict=True``. Only 2-D
images are supported (ADM's 1-D/3-D variants are not needed here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

__all__ = [
    "GROUPNORM_GROUPS",
    "POOL_TYPES",
    "AttentionBlock",
    "AttentionPool2d",
    "Downsample",
    "EncoderUNetModel",
    "GroupNorm32",
    "QKVAttention",
    "QKVAttentionLegacy",
    "ResBlock",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "Upsample",
    "normalization",
    "timestep_embedding",
    "use_fused_attention",
    "zero_module",
]

GROUPNORM_GROUPS = 32
POOL_TYPES = ("adaptive", "attention", "spatial", "spatial_v2")


# --------------------------------------------------------------------------- helpers


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, ``[cos | sin]`` as in ADM.

    The cos-then-sin order matters: the first ``time_embed`` linear layer of the released
    checkpoints was trained on exactly this layout.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D, got shape {tuple(timesteps.shape)}")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters so residual branches / outputs start as the identity / zero."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 (fp16 statistics are too coarse)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """ADM's standard 32-group norm; fails loudly when the group count does not divide."""
    if channels % GROUPNORM_GROUPS != 0:
        raise ValueError(
            f"GroupNorm needs channels divisible by {GROUPNORM_GROUPS}, got {channels}"
        )
    return GroupNorm32(GROUPNORM_GROUPS, channels)


def _maybe_checkpoint(fn, *args: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Recompute ``fn`` in backward when enabled and autograd is recording."""
    if enabled and torch.is_grad_enabled():
        return _torch_checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# --------------------------------------------------------------------------- blocks


class TimestepBlock(nn.Module):
    """Marker base class: ``forward(x, emb)`` also receives the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential container that hands ``emb`` only to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv named ``conv``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        elif self.out_channels != channels:
            raise ValueError("Upsample without a conv cannot change the channel count")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling via a strided 3x3 conv or 2x2 average pooling, stored as ``op``."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("Downsample without a conv cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling.

    With ``use_scale_shift_norm`` the embedding produces a FiLM-style (scale, shift) pair
    applied after the second norm; otherwise it is added before it. ``up``/``down`` resample
    both branches between the first norm/activation and the first conv, as ADM does.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ResBlock cannot both upsample and downsample")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.updown = up or down

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self._forward, x, emb, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        cond = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = cond.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + cond)
        return self.skip_connection(x) + h


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention on ``[B*heads, ch, T]`` tensors, softmax taken in float32.

    q and k are each scaled by ``ch**-0.25`` before the product (ADM's fp16-friendly form).
    """
    ch = q.shape[1]
    scale = ch**-0.25
    logits = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    return torch.einsum("bts,bcs->bct", weights, v)


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`_attention` through ``torch.nn.functional.scaled_dot_product_attention`` (flash or
    memory-efficient kernels on CUDA): its 1/√ch scale is ADM's ch^{-1/4} on q and on k."""
    out = nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    )
    return out.transpose(1, 2)


def use_fused_attention(model: nn.Module, on: bool = True) -> int:
    """Switch every ADM attention block of ``model`` to (or from) the fused kernel; returns
    how many there are (0: the switch changes nothing)."""
    found = 0
    for module in model.modules():
        if isinstance(module, (QKVAttention, QKVAttentionLegacy)):
            module.fused = bool(on)
            found += 1
    return found


class QKVAttentionLegacy(nn.Module):
    """QKV attention whose input is laid out ``[N, heads * (q|k|v) * ch, T]`` (old ADM order)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.fused = False  # use_fused_attention: scaled_dot_product_attention in place

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} not divisible by 3*{self.n_heads} heads")
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs * self.n_heads, 3 * ch, length).split(ch, dim=1)
        attend = _fused_attention if self.fused else _attention
        return attend(q, k, v).reshape(bs, -1, length)


class QKVAttention(nn.Module):
    """QKV attention whose input is laid out ``[N, (q|k|v) * heads * ch, T]`` (new order)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.fused = False

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} not divisible by 3*{self.n_heads} heads")
        ch = width // (3 * self.n_heads)
        q, k, v = (t.reshape(bs * self.n_heads, ch, length) for t in qkv.chunk(3, dim=1))
        attend = _fused_attention if self.fused else _attention
        return attend(q, k, v).reshape(bs, -1, length)


def _resolve_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Number of heads: fixed count, or ``channels // num_head_channels`` when that is set."""
    if num_head_channels == -1:
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {channels} attention channels")
        return num_heads
    if num_head_channels < 1 or channels % num_head_channels:
        raise ValueError(
            f"num_head_channels={num_head_channels} must divide the {channels} attention channels"
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions (norm -> qkv -> attn -> proj_out)."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = _resolve_heads(channels, num_heads, num_head_channels)
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        attn_cls = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attn_cls(self.num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self._forward, x, enabled=self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(flat))))
        return (flat + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token attends over all positions, then projects."""

    def __init__(
        self,
        spacial_dim: int,
        embed_dim: int,
        num_heads_channels: int,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        # The attribute name (and the "spacial" spelling) follow the checkpoint layout.
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5
        )
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim or embed_dim, 1)
        self.num_heads = _resolve_heads(embed_dim, 1, num_heads_channels)
        self.attention = QKVAttention(self.num_heads)
        self.spacial_dim = spacial_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        tokens = x.reshape(b, c, -1)
        if tokens.shape[-1] + 1 != self.positional_embedding.shape[-1]:
            raise ValueError(
                f"AttentionPool2d was built for a {self.spacial_dim}x{self.spacial_dim} map, "
                f"got spatial shape {tuple(x.shape[2:])}; the input image size is wrong"
            )
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = tokens + self.positional_embedding[None].to(tokens.dtype)
        out = self.c_proj(self.attention(self.qkv_proj(tokens)))
        return out[:, :, 0]


# --------------------------------------------------------------------------- models


def _check_torso_config(
    image_size: int,
    model_channels: int,
    channel_mult: Sequence[float],
    num_res_blocks: int,
    attention_resolutions: Iterable[int],
) -> tuple[int, ...]:
    """Validate the shared U-Net flags up front, naming the offending flag."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if model_channels < 1:
        raise ValueError(
            "model_channels (ADM flag num_channels / classifier_width) must be positive, "
            f"got {model_channels}"
        )
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
    if len(channel_mult) == 0:
        raise ValueError("channel_mult must have at least one level")
    for mult in channel_mult:
        ch = int(mult * model_channels)
        if ch < 1 or ch % GROUPNORM_GROUPS:
            raise ValueError(
                f"model_channels (ADM flag num_channels / classifier_width) = "
                f"{model_channels} with channel_mult {tuple(channel_mult)} gives {ch} channels "
                f"at some level; every level needs a positive multiple of {GROUPNORM_GROUPS} "
                f"(GroupNorm uses {GROUPNORM_GROUPS} groups)"
            )
    levels = len(channel_mult)
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise ValueError(
            f"image_size={image_size} is not divisible by 2**(len(channel_mult)-1)={factor}; "
            "the skip connections would not line up"
        )
    reachable = {2**i for i in range(levels)}
    ds_set = tuple(int(d) for d in attention_resolutions)
    bad = [d for d in ds_set if d not in reachable]
    if bad:
        raise ValueError(
            f"attention_resolutions contains downsample rates {bad} that the U-Net never reaches "
            f"(reachable rates: {sorted(reachable)}, i.e. resolutions "
            f"{sorted((image_size // r for r in reachable), reverse=True)})"
        )
    return ds_set


class _TorsoMixin:
    """fp16 handling shared by both models: only conv weights of the torso become float16."""

    input_blocks: nn.ModuleList
    middle_block: nn.Module

    def _torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block]

    @staticmethod
    def _convs(modules: Iterable[nn.Module]) -> Iterable[nn.Module]:
        for root in modules:
            for m in root.modules():
                if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                    yield m

    def convert_to_fp16(self) -> None:
        """Cast torso convolutions to float16 (norms/linears stay float32, as in ADM)."""
        for conv in self._convs(self._torso()):
            conv.half()

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        for conv in self._convs(self._torso()):
            conv.float()

    @property
    def dtype(self) -> torch.dtype:
        """Dtype the torso runs in (that of the first input conv)."""
        return self.input_blocks[0][0].weight.dtype

    def _embed_time(self, timesteps: torch.Tensor, batch: int) -> torch.Tensor:
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(batch)
        emb = timestep_embedding(timesteps, self.model_channels)  # type: ignore[attr-defined]
        lin = self.time_embed[0]  # type: ignore[attr-defined]
        return self.time_embed(emb.to(lin.weight.dtype))  # type: ignore[attr-defined]


def _build_encoder(
    module: nn.Module,
    *,
    in_channels: int,
    model_channels: int,
    num_res_blocks: int,
    attention_ds: tuple[int, ...],
    dropout: float,
    channel_mult: Sequence[float],
    conv_resample: bool,
    use_checkpoint: bool,
    num_heads: int,
    num_head_channels: int,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_new_attention_order: bool,
    num_classes: int | None = None,
) -> tuple[int, int, list[int], int]:
    """Create ``time_embed`` (+ ``label_emb``), ``input_blocks``, ``middle_block`` on ``module``.

    Registration order follows ADM so ``state_dict()`` keys come out in the checkpoint's order.

    Returns ``(channels, downsample_rate, skip_channels, feature_size)`` at the bottom.
    """
    time_embed_dim = 4 * model_channels
    module.time_embed = nn.Sequential(
        nn.Linear(model_channels, time_embed_dim),
        nn.SiLU(),
        nn.Linear(time_embed_dim, time_embed_dim),
    )
    if num_classes is not None:
        module.label_emb = nn.Embedding(num_classes, time_embed_dim)

    def res(ch_in: int, ch_out: int | None = None, **kw: bool) -> ResBlock:
        return ResBlock(
            ch_in,
            time_embed_dim,
            dropout,
            out_channels=ch_out,
            use_checkpoint=use_checkpoint,
            use_scale_shift_norm=use_scale_shift_norm,
            **kw,
        )

    def attn(ch: int) -> AttentionBlock:
        return AttentionBlock(
            ch,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_checkpoint=use_checkpoint,
            use_new_attention_order=use_new_attention_order,
        )

    ch = int(channel_mult[0] * model_channels)
    module.input_blocks = nn.ModuleList(
        [TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))]
    )
    skip_chans = [ch]
    feature_size = ch
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out_ch = int(mult * model_channels)
            layers: list[nn.Module] = [res(ch, out_ch)]
            ch = out_ch
            if ds in attention_ds:
                layers.append(attn(ch))
            module.input_blocks.append(TimestepEmbedSequential(*layers))
            skip_chans.append(ch)
            feature_size += ch
        if level != len(channel_mult) - 1:
            down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
            module.input_blocks.append(TimestepEmbedSequential(down))
            skip_chans.append(ch)
            feature_size += ch
            ds *= 2

    module.middle_block = TimestepEmbedSequential(res(ch), attn(ch), res(ch))
    feature_size += ch
    return ch, ds, skip_chans, feature_size


class UNetModel(_TorsoMixin, nn.Module):
    """ADM's full U-Net: predicts noise (and variance when ``out_channels = 2*in``).

    ``attention_resolutions`` holds *downsample rates* (``image_size // resolution``), as in
    ADM's constructor; :func:`calguide.nets.create_unet` converts ADM's resolution strings.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        super().__init__()
        attention_ds = _check_torso_config(
            image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions
        )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_ds
        self.channel_mult = tuple(channel_mult)
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint

        ch, ds, skip_chans, self._feature_size = _build_encoder(
            self,
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_ds=attention_ds,
            dropout=dropout,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            use_checkpoint=use_checkpoint,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
            num_classes=num_classes,
        )
        time_embed_dim = 4 * model_channels

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                time_embed_dim,
                dropout,
                out_channels=ch_out,
                use_checkpoint=use_checkpoint,
                use_scale_shift_norm=use_scale_shift_norm,
                **kw,
            )

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            mult = channel_mult[level]
            for i in range(num_res_blocks + 1):
                out_ch = int(mult * model_channels)
                layers: list[nn.Module] = [res(ch + skip_chans.pop(), out_ch)]
                ch = out_ch
                if ds in attention_ds:
                    layers.append(
                        AttentionBlock(
                            ch,
                            num_heads=num_heads_upsample,
                            num_head_channels=num_head_channels,
                            use_checkpoint=use_checkpoint,
                            use_new_attention_order=use_new_attention_order,
                        )
                    )
                if level and i == num_res_blocks:
                    layers.append(
                        res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                self._feature_size += ch

        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )
        if use_fp16:
            self.convert_to_fp16()

    def _torso(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Map noisy images ``x`` at ``timesteps`` (and labels ``y``) to the model output."""
        if (y is None) != (self.num_classes is None):
            need = "requires" if self.num_classes is not None else "does not accept"
            raise ValueError(f"this UNetModel {need} class labels y")
        emb = self._embed_time(timesteps, x.shape[0])
        if y is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)

        skips = []
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


class EncoderUNetModel(_TorsoMixin, nn.Module):
    """ADM's half U-Net (noisy-image classifier): encoder torso plus a pooling head.

    ``pool`` is one of ``"adaptive"``, ``"attention"``, ``"spatial"``, ``"spatial_v2"``.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ) -> None:
        super().__init__()
        del num_heads_upsample  # accepted for signature parity with ADM; the encoder has no decoder
        attention_ds = _check_torso_config(
            image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions
        )
        if pool not in POOL_TYPES:
            raise ValueError(f"pool must be one of {POOL_TYPES}, got {pool!r}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("pool='attention' needs num_head_channels to be set (not -1)")

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_ds
        self.channel_mult = tuple(channel_mult)
        self.use_checkpoint = use_checkpoint
        self.pool = pool

        ch, ds, _, self._feature_size = _build_encoder(
            self,
            in_channels=in_channels,
            model_channels=model_channels,
            num_res_blocks=num_res_blocks,
            attention_ds=attention_ds,
            dropout=dropout,
            channel_mult=channel_mult,
            conv_resample=conv_resample,
            use_checkpoint=use_checkpoint,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
        )
        if pool == "adaptive":
            self.out: nn.Sequential = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                nn.ReLU(),
                nn.Linear(2048, out_channels),
            )
        else:  # spatial_v2
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                normalization(2048),
                nn.SiLU(),
                nn.Linear(2048, out_channels),
            )
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Return ``[N, out_channels]`` logits for noisy images ``x`` at ``timesteps``."""
        emb = self._embed_time(timesteps, x.shape[0])
        spatial = self.pool.startswith("spatial")
        pooled: list[torch.Tensor] = []
        h = x.to(self.dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                pooled.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            pooled.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(pooled, dim=-1))
        return self.out(h.to(x.dtype))
