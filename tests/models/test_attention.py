"""The cached attention bias: served only while the table it was built from is unchanged, however it changes."""
import pytest
import torch

from models import SwinTransformer
from models.attention import BiasCache
from tests.helpers.models import perturb, tiny_kwargs


def _fresh_copy(model: SwinTransformer) -> SwinTransformer:
    """The same weights in a new model, so every bias is built from the current table."""
    fresh = SwinTransformer(**tiny_kwargs()).eval()
    fresh.load_state_dict(model.state_dict())
    return fresh


@pytest.mark.parametrize("make_opt", [
    lambda params: torch.optim.AdamW(params, lr=1e-2, fused=True),
    lambda params: torch.optim.SGD(params, lr=1e-1, momentum=0.9, nesterov=True, fused=True),
    lambda params: torch.optim.AdamW(params, lr=1e-2, foreach=False),
], ids=["adamw_fused", "sgd_fused", "adamw_single_tensor"])
def test_evaluation_after_training_steps_equals_a_cache_free_model(make_opt):
    # fused optimizer kernels update parameters without bumping their version counter: a cache keyed on the
    # version served the epoch-0 bias to every later evaluation
    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs()))
    opt = make_opt(model.parameters())
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    for epoch in range(3):
        model.train()
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            got = model(x)
            torch.testing.assert_close(got, _fresh_copy(model)(x), rtol=0, atol=0, msg=f"epoch {epoch}")
            torch.testing.assert_close(model(x), got, rtol=0, atol=0)  # the cached path, served twice


def test_a_fused_step_between_two_no_grad_forwards_in_eval_mode_is_seen():
    # no train/eval switch and no new training forward between the two evaluations: only the values changed
    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs())).eval()
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()  # gradients first, then an evaluation fills the cache
    with torch.no_grad():
        before = model(x)
    torch.optim.AdamW(model.parameters(), lr=1e-1, fused=True).step()
    with torch.no_grad():
        after = model(x)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, _fresh_copy(model)(x), rtol=0, atol=0)


def test_cache_builds_once_per_table_value_and_mask():
    cache, calls = BiasCache(), []
    table, mask, other_mask = torch.randn(9, 2), torch.zeros(4, 4, 4), torch.zeros(4, 4, 4)

    def build():
        calls.append(1)
        return table.sum() + torch.zeros(1)

    for _ in range(3):
        cache.get(table, mask, torch.float32, build)
    assert len(calls) == 1
    cache.get(table, other_mask, torch.float32, build)  # another mask object, even with equal values
    cache.get(table, mask, torch.bfloat16, build)  # another dtype
    assert len(calls) == 3
    table.data[0, 0] += 1.0  # a write through .data bumps no version either
    served = cache.get(table, mask, torch.float32, build)
    assert len(calls) == 4 and torch.equal(served, table.sum() + torch.zeros(1))


def test_cache_is_bounded_and_skipped_while_the_table_trains():
    torch.manual_seed(0)
    model = SwinTransformer(**tiny_kwargs())
    attn = model.layers[0].blocks[1].attn
    model(torch.randn(1, 3, 64, 64))  # grad enabled and a trainable table: nothing cached
    assert not attn.bias_cache._entries
    with torch.no_grad():
        for size in (64, 80, 96, 112, 128, 144, 160, 176, 192, 208):  # more padded sizes than entries
            model(torch.randn(1, 3, size, size))
    assert 0 < len(attn.bias_cache._entries) <= BiasCache.max_entries
