"""`ae`: the convolutional autoencoder baseline of the MVTec AD paper.

Bergmann et al., "MVTec AD — A Comprehensive Real-World Dataset for Unsupervised Anomaly
Detection" (CVPR 2019): the AE-L2 / AE-SSIM baseline. It is the comparison row for the seed
models (hybrid, vivano), not a placeholder: they must beat it on the same data to earn their
cost.

Architecture for a 128x128 input (each 256 input adds one more 4x4 stride-2 stage at each end,
as in the paper): encoder convs 4x4/2 (32), 4x4/2 (32), 3x3/1 (32), 4x4/2 (64), 3x3/1 (64),
4x4/2 (128), 3x3/1 (64), 3x3/1 (32), 8x8 valid -> latent d x 1 x 1; the decoder mirrors it with
transposed convolutions. LeakyReLU(0.2) everywhere but the latent and the output.

Settled here: output through a sigmoid so reconstructions live in [0, 1] like the inputs the
scoring head compares; trained with L2 + (1 - SSIM), the same loss as the hybrid model, so the
comparison isolates the architecture; RGB input (the paper used grey for some classes).
"""

from __future__ import annotations

from torch import Tensor, nn


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


class ConvAutoencoder(nn.Module):
    """x float N x 3 x S x S in [0, 1] -> reconstruction of the same shape in [0, 1]."""

    def __init__(self, input_size: int = 128, latent_dim: int = 100, channels: int = 3) -> None:
        super().__init__()
        if input_size not in (128, 256):
            raise ValueError(f"ae supports input_size 128 or 256, got {input_size}")
        self.input_size = input_size
        self.latent_dim = latent_dim
        extra = 1 if input_size == 256 else 0

        enc: list[nn.Module] = []
        cin = channels
        for _ in range(extra):
            enc += [nn.Conv2d(cin, 32, 4, 2, 1), _act()]
            cin = 32
        for cout, k, s in [
            (32, 4, 2),
            (32, 4, 2),
            (32, 3, 1),
            (64, 4, 2),
            (64, 3, 1),
            (128, 4, 2),
            (64, 3, 1),
            (32, 3, 1),
        ]:
            enc += [nn.Conv2d(cin, cout, k, s, 1 if k == 4 else k // 2), _act()]
            cin = cout
        enc += [nn.Conv2d(32, latent_dim, 8, 1, 0)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, 32, 8, 1, 0), _act()]
        cin = 32
        for cout, k, s in [
            (64, 3, 1),
            (128, 3, 1),
            (64, 4, 2),
            (64, 3, 1),
            (32, 4, 2),
            (32, 3, 1),
            (32, 4, 2),
        ]:
            conv = (
                nn.ConvTranspose2d(cin, cout, 4, 2, 1)
                if s == 2
                else nn.Conv2d(cin, cout, k, 1, k // 2)
            )
            dec += [conv, _act()]
            cin = cout
        for _ in range(extra):
            dec += [nn.ConvTranspose2d(cin, 32, 4, 2, 1), _act()]
        dec += [nn.ConvTranspose2d(cin, channels, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))
