"""PVT v1 (models/pvt.py): exact parameter counts of the four sizes, the official parameter names, other sizes."""
import pytest
import torch

from models.flops import count_params
from models.pvt import PVT_ZOO, PyramidVisionTransformer, create_pvt


@pytest.mark.parametrize("name", list(PVT_ZOO))
def test_exact_parameter_counts(name):
    with torch.device("meta"):
        model = create_pvt(name)
    assert count_params(model) == PVT_ZOO[name].params


def test_official_parameter_names_and_shapes():
    with torch.device("meta"):
        sd = create_pvt("pvt_small").state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["patch_embed1.proj.weight"] == (64, 3, 4, 4) and shapes["patch_embed2.proj.weight"] == (128, 64, 2, 2)
    assert shapes["pos_embed1"] == (1, 3136, 64) and shapes["pos_embed4"] == (1, 50, 512)  # + the class token
    assert shapes["block1.0.attn.sr.weight"] == (64, 64, 8, 8) and shapes["block1.0.attn.norm.weight"] == (64,)
    assert shapes["block1.2.attn.q.weight"] == (64, 64) and shapes["block1.2.attn.kv.weight"] == (128, 64)
    assert shapes["block3.5.mlp.fc1.weight"] == (1280, 320) and shapes["block2.3.mlp.fc1.weight"] == (1024, 128)
    assert not any(k.startswith("block4.") and ".sr." in k for k in shapes)  # no reduction in the last stage
    assert shapes["cls_token"] == (1, 1, 512) and shapes["head.weight"] == (1000, 512) and "norm.weight" in shapes
    assert "block1.3.norm1.weight" not in shapes and "block4.2.norm2.bias" in shapes


def test_other_input_sizes_resize_the_position_embeddings():
    torch.manual_seed(0)
    model = PyramidVisionTransformer(img_size=64, depths=(1, 1, 1, 1), num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 5) and torch.isfinite(y).all()
        # the class-token output of one image does not depend on the other image of the batch
        assert torch.allclose(model(x[:1]), y[:1], atol=1e-5)
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5)
    assert model.no_weight_decay() == {"cls_token"}  # as officially


def test_unknown_size_names_the_sizes():
    with pytest.raises(KeyError, match="pvt_tiny, pvt_small, pvt_medium, pvt_large"):
        create_pvt("pvt_huge")
