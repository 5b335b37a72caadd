import pytest
import torch

from fdbench.errors import FdbenchError
from fdbench.models import build_backbone


@pytest.mark.parametrize("size", [32, 48, 64, 24])
def test_any_crop_size(size):
    model = build_backbone("vit_pico", img_size=64, patch_size=8)
    cls, patch = model(torch.rand(2, 3, size, size))
    assert cls.shape == (2, 64) and patch.shape == (2, (size // 8) ** 2, 64)


def test_non_square_and_registers():
    model = build_backbone("vit_pico", img_size=32, patch_size=8, reg_tokens=4)
    cls, patch = model(torch.rand(1, 3, 32, 48))
    assert patch.shape == (1, 4 * 6, 64)


def test_masks_replace_tokens_with_the_mask_token():
    torch.manual_seed(0)
    model = build_backbone("vit_pico", img_size=32, patch_size=8).eval()
    x = torch.rand(2, 3, 32, 32)
    y = x.clone()
    y[:, :, :8, :8] = torch.rand(2, 3, 8, 8)  # change the pixels of patch 0 only
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[:, 0] = True
    with torch.no_grad():
        a = model(x, masks)
        b = model(y, masks)
        c = model(x, None)
    # a masked patch's pixels are invisible to the model ...
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    # ... and masking changes the output
    assert not torch.allclose(a[0], c[0])
    # [B, h, w] masks are accepted too
    torch.testing.assert_close(model(x, masks.view(2, 4, 4))[0], a[0])


def test_gradients_reach_the_mask_token():
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    masks = torch.zeros(1, 16, dtype=torch.bool)
    masks[0, 3] = True
    cls, patch = model(torch.rand(1, 3, 32, 32), masks)
    (patch[:, 3] * torch.randn_like(patch[:, 3])).sum().backward()  # a plain sum is 0 after LayerNorm
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_last_blocks_match_forward():
    model = build_backbone("vit_pico", img_size=32, patch_size=8).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        outs = model.forward_last_blocks(x, 2)
        cls, patch = model(x)
    assert len(outs) == 2
    torch.testing.assert_close(outs[-1][0], cls)
    torch.testing.assert_close(outs[-1][1], patch)


def test_bad_configs():
    with pytest.raises(FdbenchError, match="unknown architecture"):
        build_backbone("vit_gigantic")
    with pytest.raises(FdbenchError, match="patch size"):
        build_backbone("vit_pico", patch_size=7)
    with pytest.raises(FdbenchError, match="multiple"):
        build_backbone("vit_pico", img_size=30, patch_size=8)
