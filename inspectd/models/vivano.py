"""`vivano`: ViV-Ano (Choi and Jeong, 2022), a ViT + VAE with a Gaussian-mixture density network.

The image is cut into P x P patches, embedded linearly with a class token and learned positions
and run through a pre-norm ViT. A VAE head maps every patch token to a mean and log-variance;
the reparameterised sample z goes to a convolutional decoder (ConvTranspose x2 + BatchNorm +
ReLU stages, tanh at the end, so it reconstructs the image scaled to [-1, 1]). A mixture density
network gives, for every patch position, a K-component Gaussian mixture (weights by softmax,
sigmas by softplus, means by a linear layer); the negative log-likelihood of the patch's
embedding under it is the anomaly map, upsampled bilinearly to the image by the scoring head
(inspectd.models.scoring.LikelihoodHead); the score is its maximum.

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
- Diagonal covariance (the paper uses full). The paper's reading (density="embedding",
  covariance="full", detach=False) is an option; at the paper's configuration on two small
  sets it gave the same recall at 1 % FRR and lower AUPRO (docs/models.md, issue 16).
- Sigmas have a floor of 1e-3 so the likelihood cannot diverge on a constant patch.
- At test time the decoder and the density use the mean (no sampling): verdicts are repeatable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from inspectd.models.vit import ViTEncoder, tokens_to_map

SETTLED = (
    "density over the VAE mean; mixture conditioned on patch position; embedding detached in "
    "the NLL; diagonal covariance; sigma floor 1e-3; no sampling at test time"
)
SIGMA_FLOOR = 1e-3


CONDITIONS = ("position", "embedding")
COVARIANCES = ("diagonal", "full")


class MixtureDensity(nn.Module):
    """Per patch: a K-component Gaussian mixture over `latent`-dim vectors.

    condition "position": the mixture's parameters come from a learned code per patch position
    through a small MLP; "embedding" (the paper): from the patch's own ViT token (`in_dim`).
    covariance "diagonal": per-dimension sigmas (softplus + floor); "full" (the paper): a full
    covariance through its precision's Cholesky factor U (upper triangular, softplus + floor on
    the diagonal, sigma^-1 = U^T U), so the likelihood is matmuls and sums that ONNX exports.
    """

    eye: torch.Tensor  # buffers of the full covariance, typed for mypy
    upper: torch.Tensor

    def __init__(
        self,
        positions: int,
        latent: int,
        components: int,
        hidden: int = 128,
        condition: str = "position",
        covariance: str = "diagonal",
        in_dim: int | None = None,
    ) -> None:
        super().__init__()
        if condition not in CONDITIONS or covariance not in COVARIANCES:
            raise ValueError(
                f"density condition must be one of {CONDITIONS} and covariance one of "
                f"{COVARIANCES}, got {condition!r}, {covariance!r}"
            )
        if condition == "embedding" and in_dim is None:
            raise ValueError("an embedding-conditioned density needs in_dim")
        self.k, self.latent, self.full = components, latent, covariance == "full"
        self.code = (
            nn.Parameter(torch.randn(positions, hidden) * 0.02) if condition == "position" else None
        )
        first = nn.Linear(hidden if in_dim is None or self.code is not None else in_dim, hidden)
        self.net = nn.Sequential(first, nn.ReLU(inplace=True))
        self.logits = nn.Linear(hidden, components)
        self.means = nn.Linear(hidden, components * latent)
        self.sigmas = nn.Linear(hidden, components * latent * (latent if self.full else 1))
        if self.full:
            eye = torch.eye(latent)
            self.register_buffer("eye", eye, persistent=False)
            self.register_buffer("upper", torch.ones(latent, latent).triu(1), persistent=False)
            with torch.no_grad():  # start near the identity precision
                self.sigmas.weight.mul_(0.01)
                self.sigmas.bias.copy_(
                    (eye * 0.5413).flatten().repeat(components)
                )  # softplus^-1(1)

    def nll(self, e: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """e: N x L x latent (cond: N x L x in_dim for "embedding") -> negative log-likelihood per
        position, N x L, in nats per dimension (maps of other latent sizes read on one scale)."""
        h = self.net(self.code if self.code is not None else cond)  # L or N x L, x hidden
        lead = h.shape[:-1]
        log_pi = torch.log_softmax(self.logits(h), dim=-1)
        diff = e.unsqueeze(-2) - self.means(h).view(*lead, self.k, self.latent)  # N x L x K x d
        raw = self.sigmas(h)
        if self.full:
            raw = raw.view(*lead, self.k, self.latent, self.latent)
            diag = F.softplus(raw) + SIGMA_FLOOR
            u = raw * self.upper + diag * self.eye
            z = (u @ diff.unsqueeze(-1)).squeeze(-1)
            log_det = -(torch.log(diag) * self.eye).sum((-2, -1))  # log |Sigma|^(1/2)
        else:
            sigma = F.softplus(raw).view(*lead, self.k, self.latent) + SIGMA_FLOOR
            z = diff / sigma
            log_det = torch.log(sigma).sum(-1)
        log_n = -0.5 * (z**2).sum(-1) - log_det - 0.5 * self.latent * math.log(2 * math.pi)
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
        density: str = "position",
        covariance: str = "diagonal",
        detach: bool = True,
    ) -> None:
        super().__init__()
        if input_size % patch or patch & (patch - 1) or patch < 2:
            raise ValueError(
                f"input_size {input_size} must be a multiple of patch {patch} (a power of 2 >= 2)"
            )
        g = input_size // patch
        self.grid = (g, g)
        self.weights = (rec_weight, kl_weight, nll_weight)
        self.encoder = ViTEncoder(
            3, self.grid, patch, dim, depth, heads, mlp_ratio, dropout, class_token=True
        )
        self.vae = nn.Linear(dim, 2 * latent)
        stages: list[nn.Module] = []
        cin = max(32, min(256, dim))
        stages += [nn.Conv2d(latent, cin, 1)]
        for _ in range(int(math.log2(patch))):
            cout = max(16, cin // 2)
            stages += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            cin = cout
        stages += [nn.Conv2d(cin, 3, 3, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*stages)
        self.density = MixtureDensity(
            g * g, latent, components, condition=density, covariance=covariance, in_dim=dim
        )
        self.detach = detach

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch ViT tokens (N x L x dim), VAE mean and log-variance (N x L x latent each);
        the class token is dropped."""
        tokens = self.encoder(x * 2 - 1)[:, 1:]
        mu, logvar = self.vae(tokens).chunk(2, dim=-1)
        return tokens, mu, logvar.clamp(-10, 10)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens_to_map(z, self.grid))

    def _nll(self, tokens: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return self.density.nll(mu, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, mu, _ = self.encode(x)
        return self._nll(tokens, mu).reshape(
            -1, 1, *self.grid
        )  # -1: the batch stays dynamic in ONNX

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return (self._decode(self.encode(x)[1]) + 1) / 2

    def loss(self, x: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
        tokens, mu, logvar = self.encode(noisy)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        rec = F.mse_loss(self._decode(z), x * 2 - 1)
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(-1).mean()
        if self.detach:
            tokens, mu = tokens.detach(), mu.detach()
        nll = self._nll(tokens, mu).mean()
        w_rec, w_kl, w_nll = self.weights
        return w_rec * rec + w_kl * kl + w_nll * nll

    @torch.no_grad()
    def latent_diagnostics(self, x: torch.Tensor) -> dict[str, float]:
        """Posterior-collapse check on images x: KL to N(0, I) per latent dimension (mean and
        the share of dimensions above 0.01 nats) and the variance of mu across patches and
        images (the share of "active units", Burda et al. 2016: variance above 0.01)."""
        _, mu, logvar = self.encode(x)
        kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).flatten(0, 1).mean(0)  # per dimension
        var = mu.flatten(0, 1).var(0)
        return {
            "kl_per_dim": round(float(kl.mean()), 5),
            "kl_active_share": round(float((kl > 0.01).float().mean()), 4),
            "mu_var": round(float(var.mean()), 5),
            "active_units_share": round(float((var > 0.01).float().mean()), 4),
        }
