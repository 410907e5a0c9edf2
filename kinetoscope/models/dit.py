"""The spacetime diffusion transformer: Wan2.1's DiT, read top to bottom.

latents [B, C, T, H, W] --Conv3d patchify--> tokens [B, T*H*W, D]
  for each block (adaLN-zero, per-frame timesteps):
    x += gate1 * SelfAttn(modulate(LN(x), shift1, scale1))      RMSNorm q/k, 3D RoPE
    x += CrossAttn(LN_affine(x), text)                            text: Linear-GELU-Linear
    x += gate2 * MLP(modulate(LN(x), shift2, scale2))             GELU(tanh)
head: Linear(modulate(LN(x), shift, scale)) --unpatchify--> velocity [B, C, T, H, W]
shift/scale/gate: from the timestep embedding, plus the text's pooled mean and max when
  `text_pool` is on (not in Wan; off by default)

Parameter names follow Wan2.1's original checkpoint layout (`patch_embedding`,
`blocks.N.self_attn.q`, `blocks.N.norm3` = the cross-attention norm, `head.head`, ...), so
loading Wan weights is a key identity and diffusers weights need only the rename in
interop/wan_dit_keys.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from kinetoscope.models.layers import (
    LayerNorm32,
    RMSNorm,
    apply_rope,
    attention,
    check_key_mask,
    gated_residual,
    modulate,
    pool_text,
    rope_freqs_3d,
    timestep_embedding,
)


@dataclass
class DiTConfig:
    in_channels: int = 16
    out_channels: int = 16
    dim: int = 256
    ffn_dim: int = 1024
    num_layers: int = 6
    num_heads: int = 4
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 256  # width of the text encoder's output
    freq_dim: int = 256  # sinusoidal timestep embedding width
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    time_scale: float = 1000.0  # flow time t in [0, 1] -> Wan's 0..1000 timestep scale
    text_len: int | None = None  # Wan pads context with zeros to 512 and attends to it all
    rope_theta: float = 10000.0
    grad_checkpoint: bool = False  # recompute each block in backward (training memory)
    # Add the text's pooled mean and max to the timestep embedding (Imagen's and SD3's pooled
    # text), so every token's modulation carries the caption. Not in Wan: False for its presets.
    text_pool: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self):
        self.patch_size = tuple(self.patch_size)
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")


PRESETS: dict[str, DiTConfig] = {
    # The bundled default (~7M parameters); text_dim = the ByteTextEncoder tiny preset's dim.
    # Patches of 4x4 over the tiny VAE's 4x latents: 16x16 pixels per token, as Wan's 2x2 over 8x.
    "tiny": DiTConfig(
        dim=256, ffn_dim=1024, num_layers=6, num_heads=4, text_dim=256, patch_size=(1, 4, 4)
    ),
    # The same with 2x2 patches: 8x8 pixels per token, 576 tokens per 4-s 64x64 clip (4x as
    # many); fine-tunes from "tiny" weights through `resize_patches`.
    "tiny-fine": DiTConfig(
        dim=256, ffn_dim=1024, num_layers=6, num_heads=4, text_dim=256, patch_size=(1, 2, 2)
    ),
    "small": DiTConfig(dim=768, ffn_dim=3072, num_layers=12, num_heads=12, text_dim=512),
    "wan2.1-1.3b": DiTConfig(
        dim=1536, ffn_dim=8960, num_layers=30, num_heads=12, text_dim=4096, text_len=512
    ),
    "wan2.1-14b": DiTConfig(
        dim=5120, ffn_dim=13824, num_layers=40, num_heads=40, text_dim=4096, text_len=512
    ),
}


# tiny-fine with the pooled-text path; fine-tunes from "tiny-fine" weights (the path starts at
# zero, so the model starts as it was).
PRESETS["tiny-fine-pool"] = replace(PRESETS["tiny-fine"], text_pool=True)
# tiny-fine twice as deep (12 blocks, 13.4M parameters, about twice the compute); fine-tunes
# from "tiny-fine" weights through `deepen` (the new blocks start as the identity).
PRESETS["tiny-fine-deep"] = replace(PRESETS["tiny-fine"], num_layers=12)


def dit_config(name: str, **overrides) -> DiTConfig:
    """Return a copy of the named preset with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def resize_patches(state: dict[str, torch.Tensor], patch_size: tuple[int, int, int]) -> dict:
    """Returns DiT weights with the patch embedding and head resized to another patch size.

    FlexiViT's PI-resize, with area averaging as the resize: the new embedding reads a patch as
    the old one read it resized to the old size (`w_new = R^T w_old`), and the new head writes
    the old head's output resized to the new size. From 4x4 to 2x2 patches, each token then sees
    what the old model saw of the latents upsampled 2x: a start for fine-tuning, not a model
    that already works (every other weight is shape-free and kept).
    """
    w, head_w, head_b = (state[k] for k in ("patch_embedding.weight", "head.head.weight",
                                            "head.head.bias"))  # fmt: skip
    old = tuple(w.shape[2:])
    new = tuple(patch_size)
    if old == new:
        return state

    def resize(n_from, n_to):  # [prod(n_to), prod(n_from)]: a patch of size n_from -> n_to
        basis = torch.eye(math.prod(n_from), dtype=torch.float64).view(-1, 1, *n_from)
        return nn.functional.adaptive_avg_pool3d(basis, n_to).flatten(1).T

    up = resize(new, old)  # [old, new]: a new-size patch as the old embedding saw it
    down = resize(old, new)  # [new, old]
    out = dict(state)
    w64 = w.double().flatten(2)  # [D, C, old]
    out["patch_embedding.weight"] = (w64 @ up).view(*w.shape[:2], *new).to(w.dtype)
    c = head_b.numel() // math.prod(old)  # Wan orders a token's outputs (pt, ph, pw, C)
    hw = head_w.double().view(math.prod(old), c, -1)
    out["head.head.weight"] = torch.einsum("no,ocd->ncd", down, hw).flatten(0, 1).to(w.dtype)
    out["head.head.bias"] = (down @ head_b.double().view(-1, c)).flatten().to(head_b.dtype)
    return out


# A block's residual branches end in these: zeroed, the block passes its input through unchanged.
BLOCK_OUTPUTS = ("self_attn.o.", "cross_attn.o.", "ffn.2.")


def num_blocks(state: dict[str, torch.Tensor]) -> int:
    """Returns how many blocks the DiT weights `state` hold."""
    return 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)


def deepen(state: dict[str, torch.Tensor], num_layers: int) -> dict:
    """Returns DiT weights with more blocks, that compute exactly what `state` computes.

    Function-preserving growth (Net2Net's deeper net, with adaLN-zero's zeroed residuals): the
    old blocks keep their order, spread evenly among `num_layers`; each new block is a copy of
    the old block before it with its three residual outputs (self-attention, cross-attention and
    MLP projections) zeroed, so it starts as the identity but with features that already mean
    something, and every weight gets a gradient from the first step (the outputs' inputs are
    not zero). Raises ValueError when `num_layers` is fewer blocks than `state` has.
    """
    old = num_blocks(state)
    if num_layers < old:
        raise ValueError(f"cannot make {old} blocks into {num_layers}")
    if num_layers == old:
        return state
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    at = [i * num_layers // old for i in range(old)]  # where each old block goes
    src = [max(i for i in range(old) if at[i] <= n) for n in range(num_layers)]
    for n in range(num_layers):
        prefix = f"blocks.{src[n]}."
        new = n not in at
        for k, v in state.items():
            if k.startswith(prefix):
                rest = k[len(prefix) :]
                zero = new and rest.startswith(BLOCK_OUTPUTS)
                out[f"blocks.{n}.{rest}"] = torch.zeros_like(v) if zero else v.clone()
    return out


class Attention(nn.Module):
    """Multi-head attention with RMSNorm over all heads' q and k (Wan's qk_norm); RoPE if given."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the keys and values [B, L, heads, head_dim] of x [B, L, D]."""
        heads = lambda z: z.unflatten(-1, (self.num_heads, -1))
        return heads(self.norm_k(self.k(x))), heads(self.v(x))

    def forward(
        self,
        x: torch.Tensor,  # [B, N, D]
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,  # cross-attention: `kv(context)`
        key_mask: torch.Tensor | None = None,  # [B, L] bool
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin [N, head_dim/2]
    ) -> torch.Tensor:
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1))  # [B, N, h, d]
        k, v = self.kv(x) if kv is None else kv
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o(attention(q, k, v, key_mask))  # [B, N, D]


class DiTBlock(nn.Module):
    """One Wan2.1 block: adaLN-zero self-attention, plain cross-attention, adaLN-zero MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = LayerNorm32(d, cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        # Wan names the cross-attention norm norm3 and the MLP norm norm2; kept for its checkpoints.
        self.norm3 = LayerNorm32(d, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm32(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(d, cfg.ffn_dim), nn.GELU("tanh"), nn.Linear(cfg.ffn_dim, d)
        )
        # Learned per-block offset added to the shared timestep projection (6 vectors).
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))

    def forward(self, x, e, context, context_mask, rope, kv=None):
        # x [B, N, D]; e [B, F, 6, D] (F = 1 or latent frames); context [B, L, D];
        # kv: cross_attn.kv(context) when the caller has it already (from a sampler's cache)
        mod = self.modulation.float().unsqueeze(0) + e  # [B, F, 6, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(dim=2)  # each [B, F, D]

        h = modulate(self.norm1(x), shift1, scale1).type_as(x)
        x = gated_residual(x, self.self_attn(h, rope=rope), gate1)

        kv = self.cross_attn.kv(context) if kv is None else kv
        x = x + self.cross_attn(self.norm3(x), kv, context_mask).type_as(x)

        h = modulate(self.norm2(x), shift2, scale2).type_as(x)
        return gated_residual(x, self.ffn(h), gate2)


class Head(nn.Module):
    """Output layer: adaLN (2 vectors from the time embedding) then a linear to patch pixels."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm32(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # x [B, N, D]; e [B, F, D] time embedding (not its projection, as in Wan)
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(dim=2)
        h = modulate(self.norm(x), shift, scale)  # float32
        w = self.head.weight
        # The head is tiny and feeds the output directly: keep it in float32 as Wan does.
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.linear(h, w.float(), self.head.bias.float()).to(w.dtype)


class DiT(nn.Module):
    """Return velocity [B, C, T, H, W] from latents, flow time t, and text context."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(
            cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU("tanh"), nn.Linear(d, d)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.text_pool = None
        if cfg.text_pool:
            self.text_pool = nn.Sequential(
                nn.Linear(2 * cfg.text_dim, d), nn.SiLU(), nn.Linear(d, d)
            )
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        if not self.patch_embedding.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (also after `to_empty`): xavier linears, adaLN-zero.

        The timestep projection, every modulation table, the cross-attention output, the pooled
        text's last layer and the head start at zero, so each block starts as the identity and
        the model outputs zero (DiT's adaLN-zero; PixArt's zeroed cross-attention output).
        Gradients still reach every weight after the first step because the gates' own gradients
        are non-zero.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (RMSNorm, nn.LayerNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embedding.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding, self.text_pool or ()):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        if self.text_pool is not None:
            nn.init.zeros_(self.text_pool[2].weight)
        nn.init.zeros_(self.time_projection[1].weight)
        nn.init.zeros_(self.time_projection[1].bias)
        for block in self.blocks:
            nn.init.zeros_(block.modulation)
            nn.init.zeros_(block.cross_attn.o.weight)
        nn.init.zeros_(self.head.modulation)
        nn.init.zeros_(self.head.head.weight)

    def forward(
        self,
        x: torch.Tensor,  # [B, C, T, H, W] noisy latents
        t: torch.Tensor,  # [B] or [B, T] flow time in [0, 1]
        context: torch.Tensor,  # [B, L, text_dim]
        context_mask: torch.Tensor | None = None,  # [B, L] bool, True = real token
        cache: dict | None = None,
        features: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Returns the velocity. `cache`: a dict kept across calls that share one context (a
        sampler's steps); the first call stores every block's cross-attention keys and values of
        the embedded context in it, later calls reuse them (same numbers, less work). The cache
        never reaches the blocks, so compiled blocks do not recompile for it. `features`: a
        block index; returns (velocity, that block's output tokens [B, N, D]), for a training
        head that reads what the DiT holds midway (REPA's place).
        """
        cfg = self.cfg
        b, c, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        self._check_inputs(x, t, context, context_mask)
        grid = (frames // pt, height // ph, width // pw)

        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(x.to(dtype))  # [B, D, T', H', W']
        x = rearrange(x, "b d t h w -> b (t h w) d").to(dtype).contiguous()

        # Timestep embedding and its 6-vector projection stay float32 (Wan runs them that way).
        t = t.reshape(b, -1).float()  # [B, F], F = 1 or frames
        with torch.autocast(x.device.type, enabled=False):
            freq = timestep_embedding(t.flatten() * cfg.time_scale, cfg.freq_dim)  # [B*F, freq]
            w = self.time_embedding[0].weight
            e = self.time_embedding(freq.to(w.dtype)).float().unflatten(0, (b, -1))  # [B, F, D]
            if self.text_pool is not None:  # one vector per caption, on every frame's time
                pooled = pool_text(context, context_mask).to(self.text_pool[0].weight.dtype)
                e = e + self.text_pool(pooled).float()[:, None]
            e0 = self.time_projection(e.to(w.dtype)).float().unflatten(-1, (6, cfg.dim))

        def embed():
            c, m = self._pad_context(context, context_mask)
            return self.text_embedding(c.to(dtype)), m  # [B, L, D], [B, L]

        if cache is None:  # (training: FSDP gathers a block's weights only inside its forward)
            (context, context_mask), kvs = embed(), [None] * len(self.blocks)
        else:  # the context's work once: its embedding, every block's keys and values
            if self not in cache:
                c, m = embed()
                cache[self] = c, m, [block.cross_attn.kv(c) for block in self.blocks]
            context, context_mask, kvs = cache[self]

        if features is not None and not 0 <= features < len(self.blocks):
            raise ValueError(f"features must name one of {len(self.blocks)} blocks, got {features}")
        rope = rope_freqs_3d(cfg.head_dim, grid, cfg.rope_theta, x.device)
        hidden = None
        for i, (block, kv) in enumerate(zip(self.blocks, kvs)):
            if cfg.grad_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, e0, context, context_mask, rope, kv, use_reentrant=False)
            else:
                x = block(x, e0, context, context_mask, rope, kv)
            if i == features:
                hidden = x

        x = self.head(x, e)  # [B, N, pt*ph*pw*C]
        # Wan orders each token's outputs (pt, ph, pw, C): C varies fastest.
        v = rearrange(
            x,
            "b (t h w) (p q r c) -> b c (t p) (h q) (w r)",
            t=grid[0], h=grid[1], w=grid[2], p=pt, q=ph, r=pw,
        )  # fmt: skip
        return v if features is None else (v, hidden)

    def _pad_context(self, context, mask):
        """Return context zero-padded to cfg.text_len (Wan's convention) and the mask to match."""
        pad = (self.cfg.text_len or 0) - context.shape[1]
        if pad <= 0:
            return context, mask
        context = nn.functional.pad(context, (0, 0, 0, pad))
        if mask is not None:
            mask = nn.functional.pad(mask, (0, pad), value=False)
        return context, mask

    def _check_inputs(self, x, t, context, context_mask) -> None:
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"latents must be [B, {cfg.in_channels}, T, H, W], got {tuple(x.shape)}"
            )
        b, _, frames, height, width = x.shape
        if frames % cfg.patch_size[0] or height % cfg.patch_size[1] or width % cfg.patch_size[2]:
            raise ValueError(
                f"latent size T={frames} H={height} W={width} is not divisible by the patch size "
                f"{cfg.patch_size}; crop or pad the video so latents are multiples of it"
            )
        if t.shape not in ((b,), (b, frames)):
            raise ValueError(f"t must be [B={b}] or [B={b}, T={frames}], got {tuple(t.shape)}")
        if t.ndim == 2 and cfg.patch_size[0] != 1:
            raise ValueError(f"per-frame t needs patch_size[0] == 1, got {cfg.patch_size}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise ValueError(
                f"context must be [B={b}, L, {cfg.text_dim}], got {tuple(context.shape)}"
            )
        check_key_mask(context_mask, b, context.shape[1], "context_mask")

    def compile_blocks(self) -> DiT:
        """torch.compile each block in place (regional compilation: the blocks share one code
        object, so one compile serves all of them) and returns the model. The loop around them
        stays eager; state-dict names do not change."""
        for block in self.blocks:
            block.compile()
        return self

    def num_params(self) -> int:
        """Return the number of parameters."""
        return sum(p.numel() for p in self.parameters())
