"""Squash and dynamic routing: invariants, and equivalence with a slow loop reference."""
from __future__ import annotations

import pytest
import torch

from capslib.engine.capsules import ClassCaps, ConvCaps
from capslib.engine.routing import RoutingTrace, dynamic_routing, squash
from slow_capsules import ref_classcaps, ref_convcaps

torch.set_default_dtype(torch.float32)


# ---- tests ----

def test_squash_values_and_range():
    s = torch.randn(1000, 8) * torch.logspace(-4, 2, 1000).unsqueeze(1)
    v = squash(s)
    n = v.norm(dim=-1)
    assert (n >= 0).all() and (n < 1).all()
    # far beyond float32's resolution of 1 - ‖v‖ the length rounds to 1, never above
    assert (squash(torch.randn(100, 8) * 1e6).norm(dim=-1) <= 1 + 1e-6).all()
    ns = s.norm(dim=-1)
    torch.testing.assert_close(n, ns**2 / (1 + ns**2), rtol=1e-5, atol=1e-7)
    # direction preserved
    cos = (v * s).sum(-1) / (n * ns)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert torch.allclose(squash(torch.tensor([[3.0, 4.0]])), torch.tensor([[25 / 26 * 0.6, 25 / 26 * 0.8]]))


def test_squash_zero_gives_zero_and_finite_gradient():
    s = torch.zeros(4, 8, requires_grad=True)
    v = squash(s)
    assert torch.equal(v, torch.zeros_like(v))
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_coupling_coefficients_sum_to_one_over_parents(iters):
    u_hat = torch.randn(5, 7, 11, 4)  # (n, J parents, K children, D)
    trace = RoutingTrace([], [], [])
    v, c = dynamic_routing(u_hat, iters, trace=trace)
    assert c.shape == (5, 7, 11)
    torch.testing.assert_close(c.sum(dim=1), torch.ones(5, 11))  # over the parent axis
    assert not torch.allclose(c.sum(dim=2), torch.ones(5, 7))  # NOT over the children
    assert len(trace.c) == iters
    assert (v.norm(dim=-1) < 1).all()


def test_routing_zero_votes_no_nan():
    v, c = dynamic_routing(torch.zeros(3, 4, 5, 6), 3)
    assert torch.isfinite(v).all() and torch.isfinite(c).all()
    assert torch.equal(v, torch.zeros_like(v))
    torch.testing.assert_close(c, torch.full_like(c, 0.25))


@pytest.mark.parametrize("iters", [1, 3])
def test_convcaps_matches_slow_loop(iters):
    torch.manual_seed(iters)
    layer = ConvCaps(Cin=2, Din=3, Cout=3, Dout=4, iters=iters, init_std=0.7, recompute=False)
    u = torch.randn(2, 4, 3, 2, 3)  # non-square grid catches H/W mix-ups
    got = layer(u)
    want = ref_convcaps(u, layer.weight.detach(), iters)
    assert got.shape == (2, 4, 3, 3, 4)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("iters", [1, 3])
def test_classcaps_matches_slow_loop(iters):
    torch.manual_seed(10 + iters)
    layer = ClassCaps(num_inputs=2 * 3 * 2, Din=3, num_classes=4, Dout=5, iters=iters, init_std=0.7,
                      recompute=False)
    u = torch.randn(3, 2, 3, 2, 3)
    got = layer(u)
    want = ref_classcaps(u, layer.weight.detach(), iters)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,args,shape", [
    (ConvCaps, dict(Cin=3, Din=4, Cout=3, Dout=4), (2, 5, 5, 3, 4)),
    (ClassCaps, dict(num_inputs=75, Din=4, num_classes=10, Dout=16), (2, 5, 5, 3, 4)),
])
def test_recompute_gives_identical_values_and_gradients(cls, args, shape):
    torch.manual_seed(0)
    a = cls(**args, recompute=False)
    b = cls(**args, recompute=True)
    b.load_state_dict(a.state_dict())
    u1 = torch.randn(shape, requires_grad=True)
    u2 = u1.detach().clone().requires_grad_()
    out1, out2 = a(u1), b(u2)
    torch.testing.assert_close(out1, out2)
    (out1**2).sum().backward()
    (out2**2).sum().backward()
    torch.testing.assert_close(u1.grad, u2.grad)
    torch.testing.assert_close(a.weight.grad, b.weight.grad)


# ---- the hand-written routing backward against autograd's, and gradcheck ----

@pytest.mark.parametrize("iters", [1, 2, 3])
def test_fused_routing_backward_passes_gradcheck(iters):
    from capslib.engine.routing import _RoutingFunction

    torch.manual_seed(iters)
    u = (torch.randn(2, 3, 5, 4, dtype=torch.float64) * 0.8).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: _RoutingFunction.apply(x, iters, 1e-8)[0], (u,))
    strided = (torch.randn(5, 2, 3, 4, dtype=torch.float64) * 0.8).permute(1, 2, 0, 3).detach().requires_grad_()
    assert not strided.is_contiguous()  # the ConvCaps votes' layout
    assert torch.autograd.gradcheck(lambda x: _RoutingFunction.apply(x, iters, 1e-8)[0], (strided,))


@pytest.mark.parametrize("iters", [1, 3, 5])
def test_fused_routing_equals_the_autograd_loop(iters):
    torch.manual_seed(iters)
    u1 = (torch.randn(7, 6, 11, 8) * 0.5).requires_grad_()
    u2 = u1.detach().clone().requires_grad_()
    g = torch.randn(7, 6, 8)
    v1, c1 = dynamic_routing(u1, iters)  # fused backward
    v2, c2 = dynamic_routing(u2, iters, fused_backward=False)
    assert v1.grad_fn is not None and "Routing" in type(v1.grad_fn).__name__
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(c1, c2, rtol=1e-6, atol=1e-7)
    (v1 * g).sum().backward()
    (v2 * g).sum().backward()
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-5, atol=1e-6)
    assert u1.grad.abs().max() > 1e-3  # a real gradient, not zeros on both sides


def test_convcaps_gradients_equal_the_unfused_contiguous_path():
    """ConvCaps' PyTorch path (strided votes + hand-written routing backward) against the plain
    composition with autograd's loop. The fused CPU kernel has its own tests (test_fused_routing.py)."""
    from capslib.engine.capsules import capsule_votes, unfold_capsules

    torch.manual_seed(3)
    layer = ConvCaps(Cin=3, Din=4, Cout=5, Dout=4, iters=3, init_std=0.5, recompute=False)
    layer.fused = False
    u1 = torch.randn(2, 5, 4, 3, 4, requires_grad=True)
    u2 = u1.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    out1 = layer(u1)
    windows, Ho, Wo = unfold_capsules(u2, 3, 1, 1)
    v, _ = dynamic_routing(capsule_votes(windows, w2), 3, fused_backward=False)
    out2 = v.view(2, Ho, Wo, 5, 4)
    torch.testing.assert_close(out1, out2, rtol=1e-6, atol=1e-7)
    g = torch.randn_like(out1)
    (out1 * g).sum().backward()
    (out2 * g).sum().backward()
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.weight.grad, w2.grad, rtol=1e-5, atol=1e-6)


def test_routing_without_gradients_or_with_a_trace_uses_the_loop():
    u = torch.randn(3, 4, 5, 6, requires_grad=True)
    trace = RoutingTrace([], [], [])
    v_trace, _ = dynamic_routing(u, 3, trace=trace)
    assert len(trace.c) == 3 and "Routing" not in type(v_trace.grad_fn).__name__
    with torch.no_grad():
        v_eval, _ = dynamic_routing(u, 3)
    torch.testing.assert_close(v_eval, v_trace.detach())
