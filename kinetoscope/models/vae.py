"""The video compression network: a causal 3D-conv VAE with Wan2.1's architecture and math.

Video `[B, 3, T, H, W]` in [-1, 1] <-> normalised latents `[B, z, 1 + (T-1)/4, H/8, W/8]`.
Time is causal: frame 0 is encoded alone (so an image is a 1-frame video) and every later
group of 4 frames becomes one latent frame that only sees the past. That lets us run the
network in time chunks with a feature cache (the last frames each causal conv saw), so
memory stays flat however long the video is, and cut frames into blended spatial tiles so
memory stays bounded however large the frame is.

Every layer also runs on a whole clip at once (`cache=None`): that path is what training
uses, and it computes exactly what the chunked path computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

# Wan2.1's published per-channel latent statistics (diffusers' AutoencoderKLWan defaults).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

CL3D = torch.channels_last_3d
Cache = dict  # module -> the frames it saw last (or a marker): one per stream, per tile


@dataclass
class VAEConfig:
    dim: int = 16  # channels of the first (full resolution) level
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # channel multiplier per level; levels-1 = log2(8x)
    # The decoder's multipliers, when not the encoder's: a wider decoder (the same latents)
    dec_dim_mult: tuple[int, ...] | None = None
    num_res_blocks: int = 1  # per encoder level (the decoder has one more)
    attn_scales: tuple[float, ...] = ()  # resolutions (1, 1/2, ...) that get attention blocks
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # Wan's spelling, per down level
    dropout: float = 0.0
    latents_mean: tuple[float, ...] | None = None  # None = zeros
    latents_std: tuple[float, ...] | None = None  # None = ones
    tile: tuple[int, int] = (32, 8)  # (latent tile size, latent overlap) when tiling
    tile_above: int = 64  # tile automatically when the latent frame is larger than this

    def __post_init__(self) -> None:
        self.dim_mult = tuple(self.dim_mult)
        if self.dec_dim_mult is not None:
            self.dec_dim_mult = tuple(self.dec_dim_mult)
            if len(self.dec_dim_mult) != len(self.dim_mult):
                raise ValueError(
                    f"dec_dim_mult needs one multiplier per level ({len(self.dim_mult)}), "
                    f"got {self.dec_dim_mult}"
                )
        self.attn_scales = tuple(self.attn_scales)
        self.temperal_downsample = tuple(bool(t) for t in self.temperal_downsample)
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs one flag per down level ({len(self.dim_mult) - 1}), "
                f"got {self.temperal_downsample}"
            )
        for name in ("latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.z_dim:
                raise ValueError(f"{name} needs z_dim={self.z_dim} values, got {len(v)}")
            if v is not None:
                setattr(self, name, tuple(float(a) for a in v))
        self.tile = tuple(self.tile)

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def space_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


PRESETS: dict[str, VAEConfig] = {
    # The bundled default: 1.9 M parameters, fast on a CPU. 4x in space, not Wan's 8x: at 64x64
    # an 8x latent is 8x8, and a tiny VAE trained on this CPU lost small objects in it (images
    # at 18 dB after 300 steps, vs 20 dB at 4x and 29 dB after 1200).
    "tiny": VAEConfig(dim_mult=(1, 2, 4), temperal_downsample=(True, True)),
    # tiny's encoder (so its latents) with a decoder twice as wide at full resolution (32
    # channels, not 16): 1.95 M parameters; grown from a trained tiny by `widen_decoder`.
    # Train it on clips only (data.image_share=0): under torch 2.13 on CPU, a bf16 Conv3d's
    # weight gradient comes out NaN for 24 or 32 channels on 64x64 inputs of 3 or 5 frames (an
    # image is padded to 3); 33-frame clips, fp32 and 48 channels are fine.
    "tiny-wide": VAEConfig(
        dim_mult=(1, 2, 4), dec_dim_mult=(2, 2, 4), temperal_downsample=(True, True)
    ),
    # Wan2.1's VAE (127 M parameters); weights load with kinetoscope.interop.wan_vae_keys.
    "wan2.1": VAEConfig(
        dim=96,
        z_dim=16,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attn_scales=(),
        temperal_downsample=(False, True, True),
        latents_mean=WAN21_LATENTS_MEAN,
        latents_std=WAN21_LATENTS_STD,
        # Its native 480x832 (60x104 latents) decodes whole, as Wan and diffusers do: in tiles it
        # took 2.4x as long on an H200 for no less memory (benchmarks/peer.py --gpu); 720p tiles.
        tile_above=128,
    ),
}


class CausalConv3d(nn.Conv3d):
    """A Conv3d whose time padding all goes before the first frame, so no output sees the future.

    With a cache, the frames missing before this chunk come from the previous chunk instead
    of zeros, which makes chunk-by-chunk output equal whole-clip output.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0) -> None:
        pt, ph, pw = padding if isinstance(padding, tuple) else (padding,) * 3
        # Space is padded by the conv itself (no copy); time by hand, on the past side only.
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt  # what a symmetric conv would split between past and future

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        pad = self.time_pad
        past = None if cache is None or pad == 0 else cache.get(self)
        if cache is not None and pad > 0:
            # The next chunk's past: our last `pad` input frames (fewer only at the start).
            recent = x if past is None else torch.cat([past, x], dim=2)
            cache[self] = recent[:, :, -pad:].clone()  # clone: don't pin the whole chunk
        if past is not None:
            x = torch.cat([past, x], dim=2)
            pad -= past.shape[2]
        if pad > 0:
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        x = x.contiguous(memory_format=CL3D)  # a no-op on the fast path
        if _onednn_fp32(x):
            w, b, s = self.weight, self.bias, self
            return torch.mkldnn_convolution(x, w, b, s.padding, s.stride, s.dilation, s.groups)
        return super().forward(x)


def _onednn_fp32(x: torch.Tensor) -> bool:
    """True where oneDNN should run an fp32 conv that torch would send to its slow path.

    torch picks oneDNN for an fp32 Conv3d on CPU only when batch x channels x frames x height
    is large (> 20480); a decode at batch 1 falls under that and runs `slow_conv3d` (im2col +
    GEMM), which measured 2-4x slower than oneDNN here (benchmarks/peer.py). Inference only:
    under autocast the conv runs in bf16 through oneDNN anyway, and no gradient is needed.
    """
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
    )


class RMSNorm(nn.Module):
    """Returns x / rms(x) over channels (dim 1) times a learned gain; computed in fp32."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5  # F.normalize gives unit L2 norm; sqrt(dim) makes it unit RMS
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=1) * self.scale * self.gamma.float()).to(x.dtype)


class ResidualBlock(nn.Module):
    """Returns x + two causal 3x3x3 convs of x (with RMSNorm + SiLU before each)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(self.dropout(F.silu(self.norm2(x))), cache)
        return x + h


class AttentionBlock(nn.Module):
    """Returns x + single-head self-attention over each frame's pixels (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # as Wan: a new block starts as the identity

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, _, _, h, _ = x.shape
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        qkv = rearrange(self.to_qkv(y), "n (three c) h w -> three n 1 (h w) c", three=3)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [(b t), 1, h*w, c]
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=h))
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=b)


class Resample(nn.Module):
    """Returns x at 2x or 1/2x spatial size, and for the 3d modes also 2x or 1/2x frames.

    Frame 0 is never resampled in time: 1 + 2k frames <-> 1 + k frames, which is what keeps
    an image a 1-frame video at every level.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            self.conv = nn.Conv2d(dim, dim // 2, 3, padding=1)  # Wan halves channels here
        else:
            self.conv = nn.Conv2d(dim, dim, 3, stride=2)  # padded right/bottom only, as Wan
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        if mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        b = x.shape[0]
        y = rearrange(x, "b c t h w -> (b t) c h w")
        if self.mode.startswith("up"):
            y = F.interpolate(y.float(), scale_factor=2.0, mode="nearest-exact").to(y.dtype)
        else:
            y = F.pad(y, (0, 1, 0, 1))
        y = self.conv(y.contiguous(memory_format=torch.channels_last))
        y = rearrange(y, "(b t) c h w -> b c t h w", b=b)
        if self.mode == "downsample3d":
            y = self._halve_frames(y, cache)
        return y

    def _double_frames(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """Returns frame 0 as is and two frames for each later frame (channels -> time)."""
        first_chunk = cache is None or self not in cache
        if cache is not None:
            cache[self] = True  # marks "frame 0 has been seen" for the next chunks
        first, rest = (x[:, :, :1], x[:, :, 1:]) if first_chunk else (x[:, :, :0], x)
        if rest.shape[2] == 0:
            return first
        y = self.time_conv(rest, cache)  # [B, 2C, t, H, W], zero past before frame 1
        y = rearrange(y, "b (two c) t h w -> b c (t two) h w", two=2)
        return torch.cat([first, y], dim=2)

    def _halve_frames(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        """Returns frame 0 as is, then one frame per stride-2 window (0,1,2), (2,3,4), ..."""
        past = None if cache is None else cache.get(self)
        if cache is not None:
            cache[self] = x[:, :, -1:].clone()  # the next window starts on this frame
        if past is not None:
            return self.time_conv(torch.cat([past, x], dim=2))
        if x.shape[2] == 1:
            return x
        return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)


class Encoder3d(nn.Module):
    """Returns `[B, out_dim, 1 + (T-1)/4, H/8, W/8]` features of a video `[B, 3, T, H, W]`."""

    def __init__(self, cfg: VAEConfig, out_dim: int) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        scale = 1.0
        for i, (in_dim, dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(dim))
                in_dim = dim
            if i < len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                layers.append(Resample(dim, mode))
                scale /= 2
        self.down = nn.ModuleList(layers)
        self.mid = nn.ModuleList(
            [ResidualBlock(dim, dim, cfg.dropout), AttentionBlock(dim), ResidualBlock(dim, dim)]
        )
        self.norm_out = RMSNorm(dim)
        self.conv_out = CausalConv3d(dim, out_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in (*self.down, *self.mid):
            x = layer(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder3d(nn.Module):
    """Returns a video `[B, 3, 1 + 4(t-1), 8h, 8w]` from latents `[B, z, t, h, w]`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mult = cfg.dec_dim_mult or cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *reversed(mult))]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid = nn.ModuleList(
            [
                ResidualBlock(dims[0], dims[0], cfg.dropout),
                AttentionBlock(dims[0]),
                ResidualBlock(dims[0], dims[0], cfg.dropout),
            ]
        )
        layers: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(cfg.dim_mult) - 2)
        for i, (in_dim, dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the Resample before this level halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(dim))
                in_dim = dim
            if i < len(cfg.dim_mult) - 1:
                layers.append(Resample(dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
                scale *= 2
        self.up = nn.ModuleList(layers)
        self.norm_out = RMSNorm(dim)
        self.conv_out = CausalConv3d(dim, 3, 3, padding=1)

    def forward(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = self.conv_in(z, cache)
        for layer in (*self.mid, *self.up):
            x = layer(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class VAE(nn.Module):
    """The video compression network; `encode` / `decode` work on normalised latents."""

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VAEConfig()
        z = cfg.z_dim
        self.encoder = Encoder3d(cfg, 2 * z)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, 1)  # -> posterior mean, logvar
        self.post_quant_conv = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(cfg)
        # Start the posterior nearly deterministic (std e^-3). At logvar 0, with a KL weight of
        # 1e-6, the encoder spends its first thousand steps inflating its means to outshout unit
        # noise (seen here: latent std 3 and PSNR 16 dB after 400 steps).
        with torch.no_grad():
            self.quant_conv.weight[z:].zero_()
            self.quant_conv.bias[z:].fill_(-6.0)
        # Stored with the weights: latents are (mean - latents_mean) / latents_std per channel.
        mean = cfg.latents_mean or (0.0,) * z
        std = cfg.latents_std or (1.0,) * z
        self.register_buffer("latents_mean", torch.tensor(mean).view(1, z, 1, 1, 1))
        self.register_buffer("latents_std", torch.tensor(std).view(1, z, 1, 1, 1))
        self.channels_last_()

    def channels_last_(self) -> VAE:
        """Returns self with every conv kernel channels-last: much faster on CPU (oneDNN: ~2x in
        bf16 at 32+ channels, ~10x at 4-16 channels in fp32). load_state_dict and .to() keep the
        layout; load_state_dict(assign=True) takes the file's, so loaders call this after it."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=CL3D)
            if isinstance(m, nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        return self

    @torch.no_grad()
    def inflate_(self) -> VAE:
        """Returns self, made a per-frame image VAE: the training init (weights load over it).

        Every causal conv's past taps become zero, so it sees the present frame only; every
        time downsample keeps the latest frame of its window and every time upsample repeats
        its frame. A 1-frame image never reaches the past taps or the time convs, so from a
        random init a phase of images leaves them random and the first clips meet noise from
        the past (seen here: 33-frame clips at 17 dB, frame 0 at 29 dB, after 400 clip steps).
        Inflated, clips start as well reconstructed as their frames' images allow.
        """
        for name, m in self.named_modules():
            if not isinstance(m, CausalConv3d) or m.kernel_size[0] == 1:
                continue
            if name.endswith("time_conv"):  # [C or 2C, C, 3, 1, 1] -> the present frame, twice
                eye = torch.eye(m.in_channels).view(m.in_channels, m.in_channels, 1, 1)
                m.weight.zero_()
                for k in range(m.out_channels // m.in_channels):
                    m.weight[k * m.in_channels : (k + 1) * m.in_channels, :, -1] = eye
                m.bias.zero_()
            else:
                m.weight[:, :, :-1].zero_()
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides) -> VAE:
        """Returns a randomly initialised VAE of a named preset (`tiny`, `wan2.1`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(replace(PRESETS[name], **overrides))

    # ---- public API -------------------------------------------------------------------

    def encode(
        self,
        x: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tile: tuple[int, int] | bool | None = None,
    ) -> torch.Tensor:
        """Returns normalised latents `[B, z, 1 + (T-1)//4, H/8, W/8]` of video x in [-1, 1].

        The posterior mean by default; `sample=True` draws from the posterior. `tile`:
        None tiles automatically for large frames, False never, (size, overlap) in latent
        cells forces it.
        """
        mean, logvar = self.encode_dist(x, tile=tile)
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + torch.exp(0.5 * logvar) * eps.to(mean.dtype)
        return (mean - self.latents_mean) / self.latents_std

    def encode_dist(
        self, x: torch.Tensor, tile: tuple[int, int] | bool | None = None, chunked: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the raw (un-normalised) posterior (mean, logvar), each `[B, z, t, h, w]`."""
        self._check_video(x)
        x = x.contiguous(memory_format=CL3D)
        if chunked:
            moments = torch.cat(list(self._encode_chunks(x, tile)), dim=2)
        else:
            moments = self.quant_conv(self.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(
        self, z: torch.Tensor, tile: tuple[int, int] | bool | None = None, chunked: bool = True
    ) -> torch.Tensor:
        """Returns the video `[B, 3, 1 + 4(t-1), 8h, 8w]` in [-1, 1] of normalised latents z."""
        if chunked:
            return torch.cat(list(self.decode_chunks(z, tile)), dim=2)
        return self.decoder(self.post_quant_conv(self._denormalise(z))).clamp(-1, 1)

    def decode_chunks(
        self, z: torch.Tensor, tile: tuple[int, int] | bool | None = None
    ) -> Iterator[torch.Tensor]:
        """Yields the video one latent frame at a time: 1 frame, then 4 frames per latent.

        Memory is flat in video length (long videos can be written as they come).
        """
        z = self.post_quant_conv(self._denormalise(z).contiguous(memory_format=CL3D))
        grid = self._tile_grid(z.shape[-2], z.shape[-1], tile)
        caches = [Cache() for _ in grid]
        for i in range(z.shape[2]):
            x = _run_tiled(self.decoder, z[:, :, i : i + 1], grid, caches, 1, self.cfg.space_factor)
            yield x.clamp(-1, 1)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (reconstruction (unclamped), posterior mean, logvar) for training.

        Runs on the whole clip at once (no chunks, no tiles); the result equals the chunked path.
        """
        mean, logvar = self.encode_dist(x, chunked=False)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(
            mean.shape, generator=generator, device=mean.device
        ).to(mean.dtype)
        return self.decoder(self.post_quant_conv(z)), mean, logvar

    # ---- chunks and tiles -------------------------------------------------------------

    def _encode_chunks(self, x: torch.Tensor, tile) -> Iterator[torch.Tensor]:
        """Yields posterior moments `[B, 2z, 1, h, w]`: frame 0 alone, then 4 frames at a time."""
        f = self.cfg.space_factor
        grid = self._tile_grid(x.shape[-2] // f, x.shape[-1] // f, tile)
        caches = [Cache() for _ in grid]
        net = lambda xt, cache: self.quant_conv(self.encoder(xt, cache))
        rest = x[:, :, 1:].split(self.cfg.time_factor, dim=2) if x.shape[2] > 1 else ()
        for chunk in (x[:, :, :1], *rest):  # an image is frame 0 alone (no empty chunk after)
            yield _run_tiled(net, chunk, grid, caches, f, 1)

    def _tile_grid(self, h: int, w: int, tile) -> list[tuple[int, int, int, int, int]]:
        """Returns tiles (top, bottom, left, right, overlap) in latent cells covering h x w."""
        if tile is None:
            tile = self.cfg.tile if max(h, w) > self.cfg.tile_above else False
        if tile is False:
            return [(0, h, 0, w, 0)]
        size, overlap = tile
        if not 0 <= overlap < size:
            raise ValueError(f"tile must be (size, overlap) with 0 <= overlap < size, got {tile}")
        return [
            (top, top + th, left, left + tw, overlap)
            for top, th in _spans(h, size, overlap)
            for left, tw in _spans(w, size, overlap)
        ]

    def _denormalise(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 5 or z.shape[1] != self.cfg.z_dim:
            raise ValueError(f"latents must be [B, {self.cfg.z_dim}, t, h, w], got {list(z.shape)}")
        return z * self.latents_std.to(z.dtype) + self.latents_mean.to(z.dtype)

    def _check_video(self, x: torch.Tensor) -> None:
        tf, sf = self.cfg.time_factor, self.cfg.space_factor
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(
                f"video must be [B, 3, T, H, W] (an image is T=1), got {list(x.shape)}"
            )
        t, h, w = x.shape[2:]
        if (t - 1) % tf:
            raise ValueError(
                f"the VAE needs 1 + {tf}k frames (1, {1 + tf}, {1 + 2 * tf}, ...), got T={t}"
            )
        if h % sf or w % sf:
            raise ValueError(f"frame size must be divisible by {sf}, got H={h}, W={w}")


@torch.no_grad()
def widen_decoder(state: dict[str, torch.Tensor], vae: VAE, eps: float = 0.01) -> dict:
    """Returns the weights `state` of a VAE whose decoder is narrower than `vae`'s (the same
    encoder and latents), grown to `vae`'s shapes so that it decodes almost exactly as before.

    Net2Net-style growth: every old channel keeps its weights and reads no new channel (their
    columns are zero). New channels start from `vae`'s own random init times `eps`: nearly zero
    where an RMSNorm sums over channels (its gain is scaled by sqrt(old / new channels) to keep
    the old ones at unit RMS), yet not zero, so every new weight gets a gradient. A shortcut that
    was the identity (same channels in and out) becomes a 1x1 conv copying the old channels.
    Raises ValueError when a key outside the decoder differs or a tensor would shrink.
    """
    out = {}
    for key, new in vae.state_dict().items():
        old = state.get(key)
        if old is not None and old.shape == new.shape:
            out[key] = old.clone()
            continue
        shortcut = key.endswith(("shortcut.weight", "shortcut.bias"))
        grows = (
            old is not None
            and old.ndim == new.ndim
            and all(a <= b for a, b in zip(old.shape, new.shape))
        )
        if not key.startswith("decoder.") or not (grows or (old is None and shortcut)):
            was = "missing" if old is None else tuple(old.shape)
            raise ValueError(f"{key}: {was} does not widen to {tuple(new.shape)}")
        w = new.float() * eps
        if old is None and new.ndim == 1:  # a new shortcut's bias
            w.zero_()
        elif old is None:  # the identity -> a 1x1 conv [out, in, 1, 1, 1] copying old channels
            w[: new.shape[1], :, 0, 0, 0] = torch.eye(new.shape[1])
        elif key.endswith(".gamma"):
            w.fill_((old.shape[0] / new.shape[0]) ** 0.5)
            w[: old.shape[0]] *= old.float()
        elif new.ndim == 1:  # a bias
            w.zero_()
            w[: old.shape[0]] = old
        else:  # a conv weight [out, in, ...]
            o, i = old.shape[:2]
            w[:o] = 0
            w[:o, :i] = old
        out[key] = w.to(new.dtype)
    extra = sorted(state.keys() - out.keys())
    if extra:
        raise ValueError(f"{extra[0]}: not in the wider VAE")
    return out


def _spans(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Returns (start, length) of tiles of `size` overlapping by `overlap` that cover 0..n."""
    if n <= size:
        return [(0, n)]
    starts = list(range(0, n - size, size - overlap)) + [n - size]  # last one flush with the end
    return [(s, size) for s in starts]


def _ramp(n: int, overlap: int, ramp_in: bool, ramp_out: bool) -> torch.Tensor:
    """Returns weights `[n]`: 1 inside, rising over the first / falling over the last `overlap`."""
    w = torch.ones(n)
    r = torch.arange(1, overlap + 1) / (overlap + 1)  # never 0, so every pixel has weight
    if ramp_in and overlap:
        w[:overlap] = torch.minimum(w[:overlap], r)
    if ramp_out and overlap:
        w[n - overlap :] = torch.minimum(w[n - overlap :], r.flip(0))
    return w


def _run_tiled(
    net: Callable[[torch.Tensor, Cache], torch.Tensor],
    x: torch.Tensor,
    grid: list[tuple[int, int, int, int, int]],
    caches: list[Cache],
    scale_in: int,
    scale_out: int,
) -> torch.Tensor:
    """Returns net(x) computed tile by tile and blended with linear ramps where tiles overlap.

    `grid` is in latent cells; the input is `scale_in` pixels per cell, the output `scale_out`.
    Overlapping outputs are averaged with weights that fade each tile out towards its inner
    edges, which hides the seams that a conv's missing context leaves at a tile border.
    """
    if len(grid) == 1:
        return net(x, caches[0])
    h = max(g[1] for g in grid) * scale_out
    w = max(g[3] for g in grid) * scale_out
    out = weight = dtype = None
    for (top, bottom, left, right, overlap), cache in zip(grid, caches):
        xt = x[..., top * scale_in : bottom * scale_in, left * scale_in : right * scale_in]
        y = net(xt, cache)  # [B, C, t, th, tw]
        dtype, y = y.dtype, y.float()
        if out is None:
            out = y.new_zeros(*y.shape[:3], h, w)
            weight = y.new_zeros(h, w)
        o = overlap * scale_out
        wy = _ramp(y.shape[-2], o, top > 0, bottom * scale_out < h)
        wx = _ramp(y.shape[-1], o, left > 0, right * scale_out < w)
        wt = (wy[:, None] * wx[None, :]).to(y.device)  # [th, tw]
        ys, xs = (
            slice(top * scale_out, bottom * scale_out),
            slice(left * scale_out, right * scale_out),
        )
        out[..., ys, xs] += y * wt
        weight[ys, xs] += wt
    return (out / weight).to(dtype)
