"""The fused CPU routing kernel (capslib.engine.fused_routing): the same function and gradient as the
PyTorch path, at every capsule size and thread count, in float32 and float64, with and without the
remedies it implements (a parent bias, Efficient-CapsNet's squash); the layers and the model give the
same numbers either way; the fallback is clean and says why."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from capslib.engine import fused_routing
from capslib.engine.capsules import ClassCaps, ConvCaps, capsule_votes, use_fused_routing
from capslib.engine.config import ModelConfig
from capslib.engine.losses import margin_loss
from capslib.engine.model import CapsNet
from capslib.engine.routing import dynamic_routing, efficient_squash

pytestmark = pytest.mark.skipif(not fused_routing.available(), reason=fused_routing.status())


def reference(u, weight, iters, eps=1e-8):
    """The PyTorch path: votes materialised, routing differentiated by autograd term by term."""
    v, _ = dynamic_routing(capsule_votes(u, weight), iters, fused_backward=False, eps=eps)
    return v


def problem(n, K, J, Din, Dout, dtype, std=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, K, Din, generator=g, dtype=dtype).requires_grad_()
    w = (torch.randn(K, J, Dout, Din, generator=g, dtype=dtype) * std).requires_grad_()
    return u, w


@pytest.mark.parametrize("iters", [1, 2, 3])
@pytest.mark.parametrize("dims", [(8, 8), (8, 16), (5, 7), (4, 12), (3, 3)])
def test_float64_gradcheck(iters, dims):
    """Analytic gradient = finite differences, including padded vote widths (7 -> 8, 12 -> 16, 3 -> 4)."""
    u, w = problem(3, 11, 3, *dims, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: fused_routing.route(a, b, iters, 1e-8), (u, w))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shape", [(37, 180, 20, 8, 8), (6, 720, 10, 8, 16), (9, 27, 5, 6, 10), (4, 9, 1, 4, 4)])
def test_equals_the_pytorch_path(dtype, tol, shape):
    """Values and both gradients agree with the materialised-votes path to rounding (K not a multiple
    of the SIMD width, J = 1, Dout != Din all covered)."""
    u, w = problem(*shape, dtype)
    g = torch.randn(shape[0], shape[2], shape[4], dtype=dtype)
    v = fused_routing.route(u, w, 3, 1e-8)
    gu, gw = torch.autograd.grad(v, (u, w), g)
    v_ref = reference(u, w, 3)
    gu_ref, gw_ref = torch.autograd.grad(v_ref, (u, w), g)
    for got, want in ((v, v_ref), (gu, gu_ref), (gw, gw_ref)):
        scale = want.abs().max().clamp_min(1e-30)
        assert ((got - want).abs().max() / scale).item() < tol


def test_thread_split_gives_the_same_numbers():
    """1 and 2 threads split the problems differently; values are bitwise equal, grad W (summed per
    thread) equal to rounding."""
    u, w = problem(50, 36, 6, 8, 8, torch.float32)
    g = torch.randn(50, 6, 8)
    out = {}
    old = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            v = fused_routing.route(u, w, 3, 1e-8)
            out[t] = (v, *torch.autograd.grad(v, (u, w), g))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[1][0], out[2][0])
    assert torch.equal(out[1][1], out[2][1])
    assert torch.allclose(out[1][2], out[2][2], rtol=1e-5, atol=1e-6)


def test_squash_eps_is_honoured():
    """Tiny votes: the output length depends on eps as v ≈ ‖s‖³/√eps (DESIGN.md §3c)."""
    u, w = problem(4, 20, 3, 8, 8, torch.float64, std=1e-4)
    for eps in (1e-8, 1e-6):
        assert torch.allclose(fused_routing.route(u, w, 3, eps), reference(u, w, 3, eps), rtol=1e-10, atol=1e-300)
    assert not torch.allclose(fused_routing.route(u, w, 3, 1e-8), fused_routing.route(u, w, 3, 1e-6))


def test_zero_input_gives_zero_and_finite_gradients():
    u = torch.zeros(3, 10, 8, requires_grad=True)
    w = torch.randn(10, 4, 8, 8, requires_grad=True)
    v = fused_routing.route(u, w, 3, 1e-8)
    assert torch.equal(v, torch.zeros_like(v))
    gu, gw = torch.autograd.grad(v.sum(), (u, w))
    assert torch.isfinite(gu).all() and torch.isfinite(gw).all()


def test_bad_inputs_are_refused_with_a_message():
    u, w = problem(2, 5, 3, 4, 4, torch.float32)
    with pytest.raises(ValueError, match="iterations"):
        fused_routing.route(u, w, 0, 1e-8)
    with pytest.raises(ValueError, match=r"\(n, K, Din\)"):
        fused_routing.route(u[:, :4], w, 3, 1e-8)
    with pytest.raises(ValueError, match="float64"):
        fused_routing.route(u, w.double(), 3, 1e-8)
    big = torch.randn(5, 3, 40, 4)
    assert not fused_routing.usable(u, big)  # 40-dim votes: the layers take the PyTorch path
    with pytest.raises(ValueError, match="at most"):
        fused_routing.route(u, big, 3, 1e-8)
    with pytest.raises(ValueError, match=r"bias must be \(J, Dout\) = \(3, 4\)"):
        fused_routing.route(u, w, 3, 1e-8, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="bias is torch.float64"):
        fused_routing.route(u, w, 3, 1e-8, torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="squash_fn is one of"):
        fused_routing.route(u, w, 3, 1e-8, squash_fn="hinton")


# ---- the remedies: a parent bias before every squash, Efficient-CapsNet's squash ---------------------------

REMEDIES = {"bias": (True, "sabour"), "efficient": (False, "efficient"), "both": (True, "efficient")}


def remedy_problem(n, K, J, Din, Dout, dtype, remedy, std=0.5, seed=0):
    """u, weight, and the bias (J, Dout) or None, all requiring grad; the squash's name."""
    with_bias, squash_fn = REMEDIES[remedy]
    u, w = problem(n, K, J, Din, Dout, dtype, std=std, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    bias = (torch.randn(J, Dout, generator=g, dtype=dtype) * 0.3).requires_grad_() if with_bias else None
    return u, w, bias, squash_fn


def reference_remedy(u, weight, iters, bias, squash_fn, eps=1e-8):
    v, _ = dynamic_routing(capsule_votes(u, weight), iters, fused_backward=False, eps=eps, bias=bias,
                           squash_fn=squash_fn)
    return v


def _value_and_grads(route_fn, u, w, bias, g):
    inputs = (u, w) if bias is None else (u, w, bias)
    v = route_fn(*inputs)
    return (v, *torch.autograd.grad(v, inputs, g))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("dout", [8, 6, 12])  # 6 -> 8 and 12 -> 16: the bias is padded too
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_remedies_equal_the_pytorch_path(remedy, dtype, tol, dout, iters, threads):
    """v, grad u, grad W and grad bias of the kernel = the PyTorch path differentiated by autograd."""
    u, w, bias, squash_fn = remedy_problem(13, 27, 5, 4, dout, dtype, remedy, seed=dout + iters)
    g = torch.randn(13, 5, dout, dtype=dtype, generator=torch.Generator().manual_seed(1))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = _value_and_grads(lambda *x: fused_routing.route(x[0], x[1], iters, 1e-8, *x[2:], squash_fn=squash_fn),
                               u, w, bias, g)
    finally:
        torch.set_num_threads(old)
    want = _value_and_grads(lambda *x: reference_remedy(x[0], x[1], iters, x[2] if len(x) > 2 else None, squash_fn),
                            u, w, bias, g)
    assert len(got) == (4 if bias is not None else 3)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert ((a - b).abs().max() / b.abs().max()).item() < tol


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_remedies_float64_gradcheck(remedy, iters):
    """Analytic gradients in u, W and the bias = finite differences (Dout 6, padded to 8)."""
    u, w, bias, squash_fn = remedy_problem(3, 11, 3, 4, 6, torch.float64, remedy, seed=iters)
    inputs = (u, w) if bias is None else (u, w, bias)
    assert torch.autograd.gradcheck(lambda *x: fused_routing.route(x[0], x[1], iters, 1e-8, *x[2:],
                                                                   squash_fn=squash_fn), inputs)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
def test_efficient_squash_at_every_length(dtype, tol):
    """One child, one parent, W = I: the kernel computes efficient_squash(u) itself. Its value and gradient
    equal efficient_squash's (float64) per capsule, relative to each capsule's own size, at lengths from
    1e-7 (below sqrt(eps)) to 1e3, with a bias; in float32 too, where f'(q) = (n e^-n - (1 - e^-n)) / (2 n^3)
    written as it stands would lose every digit below n ~ 1e-3 (its series takes over there)."""
    lengths = torch.logspace(-7, 3, 400, dtype=torch.float64)
    u = torch.randn(400, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = u / u.norm(dim=-1, keepdim=True) * lengths[:, None, None]
    w = torch.eye(6, dtype=torch.float64).view(1, 1, 6, 6)
    g = torch.randn(400, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = u.to(dtype).requires_grad_()
    v = fused_routing.route(x, w.to(dtype), 1, 1e-8, squash_fn="efficient")
    (gx,) = torch.autograd.grad(v, x, g.to(dtype))
    x64 = x.detach().double().requires_grad_()
    v_ref = efficient_squash(x64.squeeze(1)).unsqueeze(1)
    (gx_ref,) = torch.autograd.grad(v_ref, x64, g)
    for a, b in ((v, v_ref), (gx, gx_ref)):
        err = (a.double() - b).norm(dim=-1) / b.norm(dim=-1)
        assert err.max().item() < tol


@pytest.mark.parametrize("squash_fn", ["sabour", "efficient"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 4e-15), (torch.float32, 2e-6)])
def test_squash_factor_and_derivative_to_a_few_ulp(squash_fn, dtype, tol):
    """The kernel's f(q) and f'(q) (v = f(q) s, q = |s|^2) against 50-digit arithmetic, q from 0 to 1e8.
    Efficient: f'(q) = (n e^-n - (1 - e^-n)) / (2 n^3), n = sqrt(q + eps), whose numerator cancels to
    -n^2/2 as n -> 0; the kernel's series keeps every digit there, in float32 too."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    eps = 1e-8
    qs = [0.0] + torch.logspace(-20, 8, 300, dtype=torch.float64).tolist()
    worst = 0.0
    for q in qs:
        q = torch.tensor(q, dtype=dtype).item()  # the q the kernel sees
        Q, E = mp.mpf(q), mp.mpf(torch.tensor(eps, dtype=dtype).item())
        n = mp.sqrt(Q + E)
        if squash_fn == "sabour":
            f, df = Q / ((1 + Q) * n), 1 / ((1 + Q) * n) - Q / ((1 + Q) ** 2 * n) - Q / (2 * (1 + Q) * n ** 3)
        else:
            f, df = -mp.expm1(-n) / n, (n * mp.exp(-n) + mp.expm1(-n)) / (2 * n ** 3)
        got = fused_routing._squash_factor(q, eps, squash_fn, dtype)
        for g, want in zip(got, (f, df)):
            if want != 0:
                worst = max(worst, float(abs((g - want) / want)))
            else:
                assert g == 0
    assert worst < tol, worst


@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_remedies_thread_split_gives_the_same_numbers(remedy):
    """As without remedies: v and grad u bitwise equal across thread counts; grad W and grad bias (summed
    per thread) equal to rounding."""
    u, w, bias, squash_fn = remedy_problem(50, 36, 6, 8, 8, torch.float32, remedy)
    g = torch.randn(50, 6, 8)
    out = {}
    old = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            out[t] = _value_and_grads(lambda *x: fused_routing.route(*x[:2], 3, 1e-8, *x[2:], squash_fn=squash_fn),
                                      u, w, bias, g)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(out[1][0], out[2][0]) and torch.equal(out[1][1], out[2][1])
    for a, b in zip(out[1][2:], out[2][2:]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("squash_fn", ["sabour", "efficient"])
def test_padded_bias_keeps_the_padded_dims_zero(squash_fn):
    """Dout = 6 runs 8-wide votes with the bias zero in dims 6, 7. Padding by hand (zero rows of W, zero bias
    dims) gives exactly zero there - in v, in grad W and in grad bias - and bit for bit the same numbers in
    the other dims."""
    u, w, bias, _ = remedy_problem(7, 19, 4, 5, 6, torch.float64, "bias")
    w8 = torch.cat([w.detach(), w.new_zeros(19, 4, 2, 5)], dim=2).requires_grad_()
    b8 = torch.cat([bias.detach(), bias.new_zeros(4, 2)], dim=1).requires_grad_()
    g = torch.randn(7, 4, 6, dtype=torch.float64)
    v6, gu6, gw6, gb6 = _value_and_grads(lambda *x: fused_routing.route(*x[:2], 3, 1e-8, x[2], squash_fn),
                                         u, w, bias, g)
    v8 = fused_routing.route(u, w8, 3, 1e-8, b8, squash_fn)
    gu8, gw8, gb8 = torch.autograd.grad(v8[..., :6], (u, w8, b8), g)
    for padded in (v8[..., 6:], gw8[:, :, 6:], gb8[:, 6:]):
        assert torch.equal(padded, torch.zeros_like(padded))
    assert gb6.abs().min() > 0
    for a, b in ((v8[..., :6], v6), (gu8, gu6), (gw8[:, :, :6], gw6), (gb8[:, :6], gb6)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_bias_equals_no_bias_bit_for_bit(dtype):
    """A zero bias adds exact zeros: the remedies' entry point computes the default's numbers."""
    u, w = problem(9, 27, 5, 6, 10, dtype)
    g = torch.randn(9, 5, 10, dtype=dtype)
    plain = _value_and_grads(lambda *x: fused_routing.route(*x, 3, 1e-8), u, w, None, g)
    zero = torch.zeros(5, 10, dtype=dtype, requires_grad=True)
    biased = _value_and_grads(lambda *x: fused_routing.route(x[0], x[1], 3, 1e-8, x[2]), u, w, zero, g)
    for a, b in zip(plain, biased):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_fused_equal_unfused(dtype):
    """ConvCaps and ClassCaps: forward and every gradient equal with and without the kernel (the
    unfused path with vote recomputation by checkpointing, as before)."""
    torch.manual_seed(0)
    layers = [ConvCaps(6, 8, 5, 8, init_std=0.5).to(dtype), ClassCaps(4 * 4 * 6, 8, 10, 16, init_std=0.5).to(dtype)]
    u = torch.randn(3, 4, 4, 6, 8, dtype=dtype) * 0.5
    for layer in layers:
        res = {}
        for fused in (True, False):
            layer.fused = fused
            x = u.clone().requires_grad_()
            y = layer(x)
            g = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
            res[fused] = (y, *torch.autograd.grad(y, (x, layer.weight), g))
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        for a, b in zip(res[True], res[False]):
            assert ((a - b).abs().max() / b.abs().max()).item() < tol


def test_model_training_step_equal_fused_and_unfused():
    """A CapsNet[6, 8, 2] training step: loss and every parameter gradient match across paths."""
    torch.manual_seed(0)
    model = CapsNet(ModelConfig(C=6, D=8, I=2, init_std=0.5))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    grads = {}
    for fused in (True, False):
        use_fused_routing(model, fused)
        model.zero_grad()
        loss = margin_loss(model(x).lengths, y)
        loss.backward()
        grads[fused] = [loss.detach()] + [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads[True], grads[False]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fallback_when_disabled_is_announced_and_equal(tmp_path):
    """CAPSLIB_FUSED_ROUTING=0: the layers run the PyTorch path, warn once naming the reason, and
    compute the same numbers."""
    code = (
        "import warnings, torch\n"
        "from capslib.engine import fused_routing\n"
        "from capslib.engine.capsules import ConvCaps\n"
        "torch.manual_seed(0)\n"
        "layer = ConvCaps(4, 8, 4, 8, init_std=0.5)\n"
        "u = torch.randn(2, 3, 3, 4, 8) * 0.5\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    v = layer(u); layer(u)\n"
        "print('WARNINGS', sum('PyTorch path' in str(x.message) for x in w))\n"
        "print('STATUS', fused_routing.status())\n"
        "torch.save(v, %r)\n" % str(tmp_path / "v.pt")
    )
    env = dict(os.environ, CAPSLIB_FUSED_ROUTING="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "WARNINGS 1" in out.stdout
    assert "disabled by CAPSLIB_FUSED_ROUTING=0" in out.stdout
    torch.manual_seed(0)
    layer = ConvCaps(4, 8, 4, 8, init_std=0.5)
    u = torch.randn(2, 3, 3, 4, 8) * 0.5
    assert torch.allclose(layer(u), torch.load(tmp_path / "v.pt"), rtol=1e-5, atol=1e-7)


def test_failed_build_names_the_compiler_error(tmp_path, monkeypatch):
    """A compiler that fails: build() raises with the compiler's message (the library then falls back)."""
    monkeypatch.setenv("CAPSLIB_KERNELS", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a 'compiler' that always fails
    with pytest.raises(RuntimeError, match="failed"):
        fused_routing.build()
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left behind


def test_float64_training_path_trains(real_data_root):
    """TrainConfig.dtype='float64' on real Fashion-MNIST: parameters, activations and the loss are
    float64 end to end, and the model learns (one epoch on 1,000 images, well above chance)."""
    from capslib import profile
    from capslib.engine.train import fit

    cfg = profile("smoke", C=4, D=8, I=1, epochs=1, batch_size=32, train_size=1000, val_size=200, test_size=200,
                  dtype="float64")
    result, model = fit(cfg)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    out = model(torch.zeros(2, 1, 28, 28))  # float32 images are cast to the model's dtype
    assert out.lengths.dtype == torch.float64 and out.capsules["inter1"].dtype == torch.float64
    assert result.test_acc > 0.4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_float32_and_bf16_autocast():
    """On CUDA the layers take the PyTorch path (the kernel is CPU-only): same numbers as on CPU in
    float32; under bf16 autocast the routing still runs in float32 and stays finite."""
    torch.manual_seed(0)
    model = CapsNet(ModelConfig(C=6, D=8, I=2, init_std=0.5))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    model.eval()
    cpu = model(x).lengths
    gpu_model = model.cuda()
    assert torch.allclose(gpu_model(x.cuda()).lengths.cpu(), cpu, rtol=1e-4, atol=1e-5)
    gpu_model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu_model(x.cuda())
        loss = margin_loss(out.lengths.float(), y.cuda())
    loss.backward()
    assert out.lengths.dtype == torch.float32 and torch.isfinite(loss)


def test_a_forked_child_gets_its_own_thread_pool():
    """After the parent used 2 routing threads, a fork()ed child (sweeps, data workers) must not wait
    on the parent's pool threads, which do not exist in the child."""
    import multiprocessing as mp

    u, w = problem(20, 12, 3, 8, 8, torch.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = fused_routing.route(u, w, 3, 1e-8).detach()
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_route_in_child, (u.detach(), w.detach())).get(timeout=60)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(got, expected)


def _route_in_child(u, w):
    torch.set_num_threads(2)
    return fused_routing.route(u, w, 3, 1e-8)


def test_kernel_march_sets_the_target_and_keys_the_build(monkeypatch):
    """CAPSLIB_KERNEL_MARCH (default native) is the kernel's -march; each target is its own cached build."""
    monkeypatch.delenv("CAPSLIB_KERNEL_MARCH", raising=False)
    assert fused_routing.march() == "native"
    native = fused_routing.kernel_path()
    monkeypatch.setenv("CAPSLIB_KERNEL_MARCH", "x86-64-v3")
    assert fused_routing.march() == "x86-64-v3"
    assert "-march=x86-64-v3" in fused_routing._flags() and fused_routing.kernel_path() != native
    monkeypatch.setenv("CAPSLIB_KERNEL_MARCH", "native; rm -rf /")
    with pytest.raises(ValueError, match="not a compiler target name"):
        fused_routing.march()
