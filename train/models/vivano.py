"""`vivano`: ViV-Ano (Choi and Jeong, 2022), a ViT + VAE with a Gaussian-mixture density network.

The image is cut into P x P patches, embedded linearly with a class token and learned positions
and run through a pre-norm ViT. A VAE head maps every patch token to a mean and log-variance;
the reparameterised sample z goes to a convolutional decoder (ConvTranspose x2 + BatchNorm +
ReLU stages, tanh at the end, so it reconstructs the image scaled to [-1, 1]). A mixture density
network gives, for every patch position, a K-component Gaussian mixture (weights by softmax,
sigmas by softplus, means by a linear layer); the negative log-likelihood of the patch's
embedding under it is the anomaly map, upsampled bilinearly to the image by the scoring head
(inspectd.train.scoring.LikelihoodHead); the score is its maximum.

Loss = rec_weight * MSE + kl_weight * KL + nll_weight * NLL (the paper gives no weights).

Open points settled here (also written to the bundle manifest):
- The density is over the VAE mean of each patch (the latent, not the wider ViT token), so a
  mixture with diagonal covariance in `latent` dimensions stays well conditioned.
- The mixture is conditioned on the patch position (a learned code per position through a small
  MLP), not on the embedding itself: a network fed the embedding it has to score can learn to
  predict it and call everything likely. Position conditioning is the "location information"
  the paper says makes localisation possible; textures simply learn similar mixtures everywhere.
- The embedding is detached where the density scores it: the mixture models what the encoder
  produces and cannot pull all embeddings together to make them likely. Only the density's own
  parameters get the NLL gradient, so under Adam nll_weight barely changes training; it is
  exposed because the paper's loss has it.
- Diagonal covariance (the paper uses full): a full factor per component and position would be
  L x K x latent^2 parameters. Not yet measured against full covariance.
- Sigmas have a floor of 1e-3 so the likelihood cannot diverge on a constant patch.
- At test time the decoder and the density use the mean (no sampling): verdicts are repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.train.models.vit import ViTEncoder, tokens_to_map

SETTLED = (
    "density over the VAE mean; mixture conditioned on patch position; embedding detached in "
    "the NLL; diagonal covariance; sigma floor 1e-3; no sampling at test time"
)
SIGMA_FLOOR = 1e-3


class MixtureDensity(nn.Module):
    """Per patch position: K-component diagonal Gaussian mixture over `latent`-dim vectors."""

    def __init__(self, positions: int, latent: int, components: int, hidden: int = 128) -> None:
        super().__init__()
        self.k, self.latent = components, latent
        self.code = nn.Parameter(torch.randn(positions, hidden) * 0.02)
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.logits = nn.Linear(hidden, components)
        self.means = nn.Linear(hidden, components * latent)
        self.sigmas = nn.Linear(hidden, components * latent)

    def nll(self, e: torch.Tensor) -> torch.Tensor:
        """e: N x L x latent -> negative log-likelihood per position, N x L (nats per dimension)."""
        h = self.net(self.code)  # L x hidden
        log_pi = torch.log_softmax(self.logits(h), dim=-1)  # L x K
        mu = self.means(h).view(-1, self.k, self.latent)  # L x K x d
        sigma = F.softplus(self.sigmas(h)).view(-1, self.k, self.latent) + SIGMA_FLOOR
        z = (e.unsqueeze(2) - mu) / sigma  # N x L x K x d
        log_n = -0.5 * (z**2).sum(-1) - torch.log(sigma).sum(-1) - 0.5 * self.latent * math.log(2 * math.pi)
        # per dimension, so maps of models with another latent size read on a similar scale
        return -torch.logsumexp(log_pi + log_n, dim=-1) / self.latent


class ViVAno(nn.Module):
    """x float N x 3 x S x S in [0, 1] -> per-patch NLL grid N x 1 x S/P x S/P (eval output).

    `loss(x, noisy)` is the training objective; `reconstruct(x)` the decoder's image in [0, 1].
    """

    def __init__(
        self,
        input_size: int = 256,
        patch: int = 16,
        dim: int = 256,
        depth: int = 4,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        latent: int = 64,
        components: int = 4,
        rec_weight: float = 1.0,
        kl_weight: float = 1e-3,
        nll_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if input_size % patch or patch & (patch - 1) or patch < 2:
            raise ValueError(f"input_size {input_size} must be a multiple of patch {patch} (a power of 2 >= 2)")
        g = input_size // patch
        self.grid = (g, g)
        self.weights = (rec_weight, kl_weight, nll_weight)
        self.encoder = ViTEncoder(3, self.grid, patch, dim, depth, heads, mlp_ratio, dropout, class_token=True)
        self.vae = nn.Linear(dim, 2 * latent)
        stages: list[nn.Module] = []
        cin = max(32, min(256, dim))
        stages += [nn.Conv2d(latent, cin, 1)]
        for _ in range(int(math.log2(patch))):
            cout = max(16, cin // 2)
            stages += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        stages += [nn.Conv2d(cin, 3, 3, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*stages)
        self.density = MixtureDensity(g * g, latent, components)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch VAE mean and log-variance, N x L x latent each (class token dropped)."""
        tokens = self.encoder(x * 2 - 1)[:, 1:]
        mu, logvar = self.vae(tokens).chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens_to_map(z, self.grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        return self.density.nll(mu).reshape(-1, 1, *self.grid)  # -1: the batch stays dynamic in ONNX

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return (self._decode(self.encode(x)[0]) + 1) / 2

    def loss(self, x: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(noisy)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        rec = F.mse_loss(self._decode(z), x * 2 - 1)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1).mean()
        nll = self.density.nll(mu.detach()).mean()
        w_rec, w_kl, w_nll = self.weights
        return w_rec * rec + w_kl * kl + w_nll * nll
