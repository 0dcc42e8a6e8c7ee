"""Training task for the video VAE: random crops of dataset clips, L1 + MSE + KL, reconstruction sheets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kinema.config import to_dict
from kinema.data.buckets import batch_indices
from kinema.data.shards import ShardDataset
from kinema.io.video import contact_sheet, save_image, to_frames
from kinema.io.weights import load_weights, save_weights
from kinema.train.distributed import DistInfo
from kinema.vae.loss import VAELossConfig, vae_loss
from kinema.vae.model import VAEConfig, VideoVAE


@dataclass
class VAETask:
    data: ShardDataset
    model_cfg: VAEConfig
    loss_cfg: VAELossConfig
    batch_size: int
    grad_accum: int = 1
    crop_frames: int = 9  # train on crops: the model is convolutional, crops are cheaper
    crop_size: int = 32
    seed: int = 0
    calibration_clips: int = 64
    preload: bool = False  # decode every clip once into memory (uint8) instead of per batch
    init_from: Path | None = None  # a VAE folder (vae.safetensors + vae.json) whose weights start the run
    # train the decoder only: the encoder, hence the latent space and every latent cache and DiT built on it, stays
    # exactly as it was (Stable Diffusion's ft-MSE VAE was made this way); needs init_from
    decoder_only: bool = False
    name: str = "vae"

    def __post_init__(self) -> None:
        if self.decoder_only and self.init_from is None:
            raise ValueError("VAETask: decoder_only needs init_from (a trained encoder to keep)")
        self._clips: torch.Tensor | None = None  # (N, F, H, W, 3) uint8 when preloaded

    def _clip(self, i: int, device: torch.device) -> torch.Tensor:
        """Clip i as (C, F, H, W) in [-1, 1] on `device`."""
        if not self.preload:
            return self.data[i]["video"].to(device)
        if self._clips is None:  # once: every clip, decoded, on the training device
            from kinema.io.video import to_frames

            self._clips = torch.stack([torch.from_numpy(to_frames(self.data[j]["video"]))
                                       for j in range(len(self.data))]).to(device)
        return self._clips[i].permute(3, 0, 1, 2).float() / 127.5 - 1.0

    def build_model(self) -> nn.Module:
        model = VideoVAE(self.model_cfg)
        if self.init_from is not None:
            state, _ = load_weights(self.init_from, "vae")
            try:
                model.load_state_dict(state)
            except RuntimeError as e:
                raise ValueError(f"{self.init_from}/vae.safetensors does not fit the VAE config: {e}") from e
        if self.decoder_only:
            model.encoder.requires_grad_(False)
        return model

    def model_config(self) -> dict:
        loss = to_dict(self.loss_cfg)
        for later in ("edge_weight", "foreground_weight"):  # added later: written only when set, so runs saved
            if not loss[later]:                              # before them still resume
                del loss[later]
        config = {"vae": to_dict(self.model_cfg), "loss": loss}
        if self.init_from is not None:
            config["init_from"] = {"folder": str(self.init_from), "decoder_only": self.decoder_only}
        return config

    def tokens_per_sample(self) -> int:
        return self.crop_frames * self.crop_size * self.crop_size

    def _crop(self, video: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A random (crop_frames, crop_size, crop_size) window of a (C, F, H, W) clip."""
        _, F, H, W = video.shape
        f, s = min(self.crop_frames, F), min(self.crop_size, H, W)
        t0, y0, x0 = (int(torch.randint(0, n - k + 1, (), generator=g)) for n, k in ((F, f), (H, s), (W, s)))
        return video[:, t0:t0 + f, y0:y0 + s, x0:x0 + s]

    def batch(self, step: int, micro: int, info: DistInfo) -> torch.Tensor:
        idx = batch_indices(len(self.data), self.seed, step, micro, self.grad_accum, info.rank, info.world_size,
                            self.batch_size)
        crops = []
        for i in idx:
            g = torch.Generator().manual_seed(self.seed * 7919 + i * 104729 + step)
            crops.append(self._crop(self._clip(i, info.device), g))
        return torch.stack(crops)  # (B, C, f, s, s)

    def loss(self, model: nn.Module, batch: torch.Tensor, generator: torch.Generator):
        x_hat, mean, logvar = model(batch, generator=generator)
        return vae_loss(batch, x_hat, mean, logvar, self.loss_cfg)

    @torch.no_grad()
    def samples(self, model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        """Originals and reconstructions of the first clips, full size, as one contact sheet."""
        clips = torch.stack([self.data[i]["video"] for i in range(min(3, len(self.data)))])
        recon = model.decode(model.encode(clips))
        rows, captions = [], []
        for x, y in zip(clips, recon, strict=True):
            rows += [to_frames(x), to_frames(y)]
            captions += ["original", "reconstruction"]
        return [save_image(out_dir / f"recon-{step:07d}.png", contact_sheet(rows, captions, scale=2))]

    @torch.no_grad()
    def calibrate(self, model: VideoVAE) -> None:
        """Latent mean/std from the raw posterior means of the first clips of the dataset."""
        means = [model.posterior(self.data[i]["video"][None])[0] for i in range(min(self.calibration_clips,
                                                                                     len(self.data)))]
        model.calibrate(torch.cat(means))

    def start(self, out_dir: Path) -> None:
        """Nothing: the VAE folder is its weights alone (calibrated at export)."""

    def export(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> Path:
        model = VideoVAE(self.model_cfg)
        model.load_state_dict(state_dict)
        self.calibrate(model.eval())
        return save_weights(out_dir, "vae", model.state_dict(), to_dict(self.model_cfg))
