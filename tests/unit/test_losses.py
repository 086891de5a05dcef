"""Losses and the scoring head compute in fp32 whatever the autocast state (bf16 training on
CUDA; CPU autocast reproduces the same bf16 arithmetic here)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from inspectd.models.scoring import MsgmsL2Head  # noqa: E402
from inspectd.train.losses import l2_ssim_loss, ssim  # noqa: E402


def _low_contrast_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = (0.5 + 0.02 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1)
    y = (0.5 + 0.02 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1)
    return x, y


def test_ssim_under_bf16_autocast_equals_fp32() -> None:
    x, y = _low_contrast_pair()
    reference = 1 - ssim(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = 1 - ssim(x, y)
        loss = l2_ssim_loss(x, y)
    # bf16 E[x^2] - mu^2 gave 0.34 against 0.46 here
    assert under.dtype == torch.float32 and loss.dtype == torch.float32
    assert float(under) == pytest.approx(float(reference), rel=1e-5)
    assert float(loss) == pytest.approx(float(((x - y) ** 2).mean() + reference), rel=1e-5)


def test_ssim_of_bf16_inputs_is_computed_in_fp32() -> None:
    x, y = _low_contrast_pair()
    xb, yb = x.bfloat16(), y.bfloat16()
    # the inputs' own rounding moves SSIM a little; the arithmetic must not move it more
    assert float(1 - ssim(xb, yb)) == pytest.approx(
        float(1 - ssim(xb.float(), yb.float())), rel=1e-5
    )


def test_msgms_head_under_bf16_autocast_equals_fp32() -> None:
    x, y = _low_contrast_pair()
    head = MsgmsL2Head()
    ref_map, ref_score = head(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amap, score = head(x, y.bfloat16())
    assert amap.dtype == torch.float32
    assert torch.allclose(score, head(x, y.bfloat16().float())[1], rtol=1e-5)
    assert torch.allclose(ref_score, score, rtol=2e-2)  # only the input's bf16 rounding differs
