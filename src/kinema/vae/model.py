"""A causal 3D convolutional VAE that compresses video in space and time.

Causal in time: every conv only looks at the current and earlier frames, and temporal downsampling
keeps frame 0 alone, so a clip of 1 + t*k frames becomes 1 + k latent frames, and a single image is a
1-frame video encoded by the same model. Norms are per position (RMS over channels), never over
frames, so changing frame t never changes the latents of earlier frames.

    vae = VideoVAE(VAEConfig())                # x4 time, x8 space, 16 channels: 48x nominal
    z = vae.encode(x)                          # (B, 3, 17, 64, 64) -> (B, 16, 5, 8, 8), normalised
    x_hat = vae.decode(z)                      # -> (B, 3, 17, 64, 64) in [-1, 1]

The model owns its latent normalisation (`latent_mean`, `latent_std` buffers, set by `calibrate` from
data and saved with the weights), so the diffusion model always sees latents of unit scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    latent_channels: int = 16
    spatial_compression: int = 8  # 2, 4, 8 or 16
    temporal_compression: int = 4  # 1, 2, 4 or 8 (frame 0 is always its own latent frame)
    patch_size: int = 2  # pixels are first folded into channels by this factor (cheap full-res stage)
    base_channels: int = 64
    max_channel_mult: int = 4
    encoder_blocks: int = 1  # residual blocks per stage
    decoder_blocks: int = 2

    def __post_init__(self) -> None:
        for name, value, allowed in (("spatial_compression", self.spatial_compression, (2, 4, 8, 16)),
                                     ("temporal_compression", self.temporal_compression, (1, 2, 4, 8)),
                                     ("patch_size", self.patch_size, (1, 2, 4))):
            if value not in allowed:
                raise ValueError(f"VAEConfig.{name} = {value}; expected one of {allowed}")
        if self.spatial_compression < self.patch_size:
            raise ValueError(f"VAEConfig: spatial_compression {self.spatial_compression} must be >= "
                             f"patch_size {self.patch_size}")
        if min(self.latent_channels, self.base_channels, self.encoder_blocks, self.decoder_blocks) < 1:
            raise ValueError("VAEConfig: channels and block counts must be >= 1")

    @property
    def steps(self) -> list[tuple[bool, bool]]:
        """(downsample space, downsample time) for each step between stages; time steps come last."""
        n_space = int(math.log2(self.spatial_compression // self.patch_size))
        n_time = int(math.log2(self.temporal_compression))
        n = max(n_space, n_time)
        return [(i < n_space, i >= n - n_time) for i in range(n)]

    @property
    def channels(self) -> list[int]:
        """Channels of each stage, from the pixel side to the latent side."""
        return [self.base_channels * min(2**i, self.max_channel_mult) for i in range(len(self.steps) + 1)]

    @property
    def compression_ratio(self) -> float:
        """Nominal ratio t*s*s*3/c: values in the video per value in the latent."""
        t, s = self.temporal_compression, self.spatial_compression
        return t * s * s * self.in_channels / self.latent_channels

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a clip of `frames` (1 + t*k) frames: frame 0 alone, then one per t frames."""
        t = self.temporal_compression
        if frames < 1 or (frames - 1) % t:
            raise ValueError(f"frames must be 1 + {t}*k for this VAE (1, {1 + t}, {1 + 2 * t}, ...), got {frames}")
        return 1 + (frames - 1) // t

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames a latent of `latent_frames` frames decodes to: the inverse of `latent_frames`."""
        return 1 + (latent_frames - 1) * self.temporal_compression

    def frame_groups(self, frames: int) -> list[range]:
        """The pixel frames each latent frame covers: [0], [1..t], [t+1..2t], ... (causal: frame 0 alone)."""
        t = self.temporal_compression
        return [range(0, 1)] + [range(1 + t * i, 1 + t * (i + 1)) for i in range(self.latent_frames(frames) - 1)]

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of the latent of a clip; a clear error for sizes the model cannot take."""
        s = self.spatial_compression
        if height < s or width < s or height % s or width % s:
            raise ValueError(f"height and width must be positive multiples of {s} for this VAE, got {height}x{width}")
        return self.latent_channels, self.latent_frames(frames), height // s, width // s

    def fit_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The largest (F, H, W) this VAE takes within a clip of (frames, height, width): (0, 0, 0) parts for
        none."""
        t, s = self.temporal_compression, self.spatial_compression
        return (1 + (frames - 1) // t * t if frames >= 1 else 0), height // s * s, width // s * s

    def pixel_shape(self, latent_frames: int, latent_height: int, latent_width: int) -> tuple[int, int, int]:
        """(F, H, W) of the clip a latent of this grid decodes to: the inverse of `latent_shape`."""
        s = self.spatial_compression
        return self.pixel_frames(latent_frames), latent_height * s, latent_width * s


# ---------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels at each (frame, pixel): no statistic crosses frames, so causality holds."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, 1, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W)
        return x * torch.rsqrt(x.float().pow(2).mean(1, keepdim=True) + self.eps).to(x.dtype) * self.weight


class Conv3d(nn.Conv3d):
    """`nn.Conv3d` that always takes oneDNN's kernel for float32 on CPU.

    PyTorch's CPU dispatch sends a small 5D input (N*C*D*H < 20480, e.g. decoding one 17x64x64 clip) to
    its im2col fallback, `slow_conv3d`, which measured 5-11x slower than oneDNN's kernel for the same
    conv (2-core AVX2 CPU; `benchmarks/vae.py`). Larger inputs (training batches) already get oneDNN;
    autocast, other dtypes and other devices keep PyTorch's own choice."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and self.padding_mode == "zeros"
                and not isinstance(self.padding, str)  # 'same' / 'valid' go through torch, which resolves them
                and torch.backends.mkldnn.is_available() and not torch.is_autocast_enabled("cpu")):
            return torch.mkldnn_convolution(x, weight, bias, self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


class CausalConv3d(Conv3d):
    """3D conv padded only on the past side in time (by repeating frame 0) and symmetrically in space."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int, int] = 3):
        kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
        super().__init__(c_in, c_out, kernel, padding=(0, kernel[1] // 2, kernel[2] // 2))
        self.time_pad = kernel[0] - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W)
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return super().forward(x)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelRMSNorm(c_in), CausalConv3d(c_in, c_out)
        self.norm2, self.conv2 = ChannelRMSNorm(c_out), CausalConv3d(c_out, c_out)
        self.skip = Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def fold(x: torch.Tensor, space: int, time: int) -> torch.Tensor:
    """Space/time to channels. Time is folded causally: frame 0 is repeated, so it lands alone.
    (B, C, 1 + t*k, H, W) -> (B, C*t*s*s, 1 + k, H/s, W/s)"""
    if time > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, time - 1, -1, -1), x], dim=2)
    return rearrange(x, "b c (f t) (h s1) (w s2) -> b (c t s1 s2) f h w", t=time, s1=space, s2=space)


def unfold(x: torch.Tensor, space: int, time: int) -> torch.Tensor:
    """Inverse of `fold`: (B, C*t*s*s, 1 + k, H, W) -> (B, C, 1 + t*k, H*s, W*s)."""
    x = rearrange(x, "b (c t s1 s2) f h w -> b c (f t) (h s1) (w s2)", t=time, s1=space, s2=space)
    return x[:, :, time - 1:]


class Downsample(nn.Module):
    """Fold space and/or time into channels, then a 1x1x1 conv; the shortcut averages channel groups."""

    def __init__(self, c_in: int, c_out: int, space: bool, time: bool):
        super().__init__()
        self.s, self.t = (2 if space else 1), (2 if time else 1)
        folded = c_in * self.s * self.s * self.t
        self.proj = Conv3d(folded, c_out, 1)
        self.group = folded // c_out if folded % c_out == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fold(x, self.s, self.t)
        shortcut = x.unflatten(1, (-1, self.group)).mean(2) if self.group else 0
        return self.proj(x) + shortcut


class Upsample(nn.Module):
    """A 1x1x1 conv to more channels, then unfold them into space and/or time; shortcut repeats channels."""

    def __init__(self, c_in: int, c_out: int, space: bool, time: bool):
        super().__init__()
        self.s, self.t = (2 if space else 1), (2 if time else 1)
        unfolded = c_out * self.s * self.s * self.t
        self.proj = Conv3d(c_in, unfolded, 1)
        self.repeats = unfolded // c_in if unfolded % c_in == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        if self.repeats:
            h = h + x.repeat_interleave(self.repeats, dim=1)
        return unfold(h, self.s, self.t)


# ---------------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, p = cfg.channels, cfg.patch_size
        self.patch = p
        self.conv_in = CausalConv3d(cfg.in_channels * p * p, ch[0])
        self.stages = nn.ModuleList()
        for i, step in enumerate([*cfg.steps, None]):
            blocks = [ResBlock(ch[i], ch[i]) for _ in range(cfg.encoder_blocks)]
            if step is not None:
                blocks.append(Downsample(ch[i], ch[i + 1], *step))
            self.stages.append(nn.Sequential(*blocks))
        self.mid = ResBlock(ch[-1], ch[-1])
        self.norm_out = ChannelRMSNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, F, H, W) -> (B, 2*c, f, h, w)
        x = self.conv_in(fold(x, self.patch, 1))
        for stage in self.stages:
            x = stage(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, p = cfg.channels[::-1], cfg.patch_size
        steps = cfg.steps[::-1]
        self.patch = p
        self.conv_in = CausalConv3d(cfg.latent_channels, ch[0])
        self.mid = ResBlock(ch[0], ch[0])
        self.stages = nn.ModuleList()
        for i, step in enumerate([*steps, None]):
            blocks = [ResBlock(ch[i], ch[i]) for _ in range(cfg.decoder_blocks)]
            if step is not None:
                blocks.append(Upsample(ch[i], ch[i + 1], *step))
            self.stages.append(nn.Sequential(*blocks))
        self.norm_out = ChannelRMSNorm(ch[-1])
        self.conv_out = CausalConv3d(ch[-1], cfg.in_channels * p * p)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, c, f, h, w) -> (B, 3, F, H, W)
        x = self.mid(self.conv_in(z))
        for stage in self.stages:
            x = stage(x)
        return unfold(self.conv_out(F.silu(self.norm_out(x))), self.patch, 1)


# ---------------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------------


class VideoVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (mean, logvar) of q(z | x), each (B, c, f, h, w)."""
        self.cfg.latent_shape(*x.shape[2:])  # clear error for frame counts / sizes the model cannot take
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean.view(-1, 1, 1, 1)) / self.latent_std.view(-1, 1, 1, 1)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std.view(-1, 1, 1, 1) + self.latent_mean.view(-1, 1, 1, 1)

    def encode(self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video in [-1, 1] -> normalised latent (posterior mean, or a sample)."""
        mean, logvar = self.posterior(x)
        if sample:
            mean = mean + torch.randn(mean.shape, generator=generator, device=mean.device) * (0.5 * logvar).exp()
        return self.normalize(mean)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent -> video, clamped to [-1, 1]."""
        return self.decoder(self.denormalize(z)).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction, mean, logvar), the latent sampled by reparameterisation."""
        mean, logvar = self.posterior(x)
        z = mean + torch.randn(mean.shape, generator=generator, device=mean.device) * (0.5 * logvar).exp()
        return self.decoder(z), mean, logvar

    @torch.no_grad()
    def calibrate(self, raw_means: torch.Tensor) -> None:
        """Set the latent normalisation from raw posterior means of real data, (N, c, f, h, w)."""
        self.latent_mean.copy_(raw_means.mean(dim=(0, 2, 3, 4)))
        self.latent_std.copy_(raw_means.std(dim=(0, 2, 3, 4)).clamp(min=1e-4))
