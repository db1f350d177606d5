"""PVT v1 (models/pvt.py): exact parameter counts of the four sizes, the official parameter names, other sizes,
logits equal to an independent implementation's."""
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


def _from_hugging_face(sd: dict) -> dict:
    """Hugging Face transformers' PVT v1 state dict in the official names (key and value into one kv)."""
    out = {"cls_token": sd["pvt.encoder.patch_embeddings.3.cls_token"],
           "norm.weight": sd["pvt.encoder.layer_norm.weight"], "norm.bias": sd["pvt.encoder.layer_norm.bias"],
           "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
    renames = {"layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
               "attention.output.dense": "attn.proj", "attention.self.sequence_reduction": "attn.sr",
               "attention.self.layer_norm": "attn.norm", "mlp.dense1": "mlp.fc1", "mlp.dense2": "mlp.fc2"}
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith("pvt.encoder.patch_embeddings.") and parts[4] != "cls_token":
            stage = int(parts[3]) + 1
            name = {"position_embeddings": f"pos_embed{stage}", "projection": f"patch_embed{stage}.proj",
                    "layer_norm": f"patch_embed{stage}.norm"}[parts[4]]
            out[".".join([name] + parts[5:])] = value
        elif key.startswith("pvt.encoder.block."):
            stage, block, rest = int(parts[3]) + 1, parts[4], ".".join(parts[5:])
            prefix = f"block{stage}.{block}."
            if rest.startswith("attention.self.key."):
                kind = rest.rsplit(".", 1)[1]
                value_key = key.replace("attention.self.key.", "attention.self.value.")
                out[prefix + "attn.kv." + kind] = torch.cat([value, sd[value_key]])
            elif not rest.startswith("attention.self.value."):
                for theirs, official in renames.items():
                    if rest.startswith(theirs + "."):
                        out[prefix + official + rest[len(theirs):]] = value
                        break
    return out


def test_logits_equal_hugging_faces_independent_pvt_v1():
    """An independent PVT v1 (Hugging Face transformers' PvtForImageClassification, pvt_tiny's shape) with random
    weights, norms included, loaded into this one: the same logits."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    theirs = transformers.PvtForImageClassification(transformers.PvtConfig()).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = create_pvt("pvt_tiny", num_classes=1000).eval()
    converted = _from_hugging_face(theirs.state_dict())
    assert set(converted) == set(ours.state_dict())
    ours.load_state_dict(converted)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(pixel_values=x).logits, rtol=1e-4, atol=5e-4)  # k, v swapped: 0.1
