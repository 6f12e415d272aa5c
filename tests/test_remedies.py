"""The remedies for vanishing activations (ModelConfig ``squash_bias``, ``squash_fn``, ``residual``).

Each one equals a slow, obvious re-implementation (plain loops over capsules, float64), passes gradcheck,
leaves the hash of every default config alone, refuses bad values, trains inside a CapsNet, and runs on the
fused CPU kernel with the PyTorch path's numbers (a remedy the kernel lacked would take the PyTorch path
with one warning naming it).
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.func import functional_call

from capslib.engine import fused_routing
from capslib.engine.capsules import ClassCaps, ConvCaps, PrimaryCaps
from capslib.engine.config import ConfigError, ModelConfig, RunConfig, profile
from capslib.engine.criterion import gradient_signal, parameter_groups
from capslib.engine.losses import margin_loss
from capslib.engine.model import CapsNet
from capslib.engine.routing import SQUASH_EPS, _RoutingFunction, dynamic_routing, efficient_squash, get_squash
from slow_capsules import ref_classcaps, ref_convcaps, ref_squash

EPS = SQUASH_EPS
REMEDIES = {  # name -> layer keyword arguments
    "bias": dict(squash_bias=0.1),
    "efficient": dict(squash_fn="efficient"),
    "residual": dict(residual=True),
    "all": dict(squash_bias=0.1, squash_fn="efficient", residual=True),
}


@pytest.fixture(autouse=True)
def _quiet_fallback_warnings():
    """The remedies' one-time fallback warnings are the subject of their own tests only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="capslib: the fused CPU routing kernel", category=RuntimeWarning)
        yield


def _layer64(cls, seed=0, **kw):
    torch.manual_seed(seed)
    layer = cls(**kw).double()
    if getattr(layer, "bias", None) is not None:
        with torch.no_grad():  # a different value per (type, dim): catches a wrong broadcast
            layer.bias.copy_(torch.randn_like(layer.bias) * 0.3)
    return layer


def _bias_of(layer):
    return layer.bias.detach() if layer.bias is not None else None


# ---- (a) forward = the slow reference --------------------------------------------------------------------

def test_efficient_squash_equals_its_formula_and_keeps_short_lengths():
    torch.manual_seed(0)
    s = torch.randn(200, 8, dtype=torch.float64) * torch.logspace(-6, 2, 200, dtype=torch.float64)[:, None]
    want = torch.tensor([ref_squash(row, "efficient") for row in s.tolist()], dtype=torch.float64)
    torch.testing.assert_close(efficient_squash(s), want, rtol=1e-12, atol=1e-300)
    n, ns = efficient_squash(s).norm(dim=-1), s.norm(dim=-1)
    assert (n < 1).all() and (n <= ns).all()
    short = ns < 1e-2
    torch.testing.assert_close(n[short], ns[short], rtol=1e-2, atol=0)  # length ≈ ‖s‖ (Sabour's: ≈ ‖s‖²)
    # float32 = float64 for short capsules too (1 - exp(-n) would lose digits to cancellation there)
    s32 = torch.randn(50, 8) * torch.logspace(-7, -2, 50)[:, None]
    torch.testing.assert_close(efficient_squash(s32).double(), efficient_squash(s32.double()), rtol=1e-6, atol=0)
    z = torch.zeros(3, 8, requires_grad=True)
    v = efficient_squash(z)
    assert torch.equal(v, torch.zeros_like(v))
    v.sum().backward()
    assert torch.isfinite(z.grad).all()
    assert get_squash("efficient") is efficient_squash


@pytest.mark.parametrize("remedy", list(REMEDIES))
@pytest.mark.parametrize("iters", [1, 3])
def test_convcaps_with_remedy_matches_slow_loop(remedy, iters):
    kw = REMEDIES[remedy]
    layer = _layer64(ConvCaps, seed=iters, Cin=2, Din=3, Cout=2, Dout=3, iters=iters, init_std=0.7, **kw)
    u = torch.randn(2, 4, 3, 2, 3, dtype=torch.float64) * 0.8  # non-square grid
    want = ref_convcaps(u, layer.weight.detach(), iters, _bias_of(layer), kw.get("squash_fn", "sabour"),
                        kw.get("residual", False))
    with torch.no_grad():
        torch.testing.assert_close(layer(u), want, rtol=1e-10, atol=1e-12)  # the autograd loop
    got = layer(u.clone().requires_grad_())  # the hand-written routing backward's forward
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("remedy", ["bias", "efficient", "all"])
def test_classcaps_with_remedy_matches_slow_loop(remedy):
    kw = {k: v for k, v in REMEDIES[remedy].items() if k != "residual"}
    layer = _layer64(ClassCaps, seed=5, num_inputs=2 * 3 * 2, Din=3, num_classes=4, Dout=5, iters=3,
                     init_std=0.7, **kw)
    u = torch.randn(3, 2, 3, 2, 3, dtype=torch.float64) * 0.8
    want = ref_classcaps(u, layer.weight.detach(), 3, _bias_of(layer), kw.get("squash_fn", "sabour"))
    with torch.no_grad():
        torch.testing.assert_close(layer(u), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer(u.clone().requires_grad_()), want, rtol=1e-10, atol=1e-12)


def test_primarycaps_efficient_squash_matches_per_capsule_formula():
    torch.manual_seed(1)
    pc = PrimaryCaps(5, C=3, D=4, squash_fn="efficient").double()
    caps, pre = pc(torch.randn(2, 5, 9, 9, dtype=torch.float64))
    B, _, H, W = pre.shape
    for b in range(B):
        for y in range(H):
            for x in range(W):
                for t in range(3):
                    want = ref_squash(pre[b, t * 4:(t + 1) * 4, y, x].tolist(), "efficient")
                    torch.testing.assert_close(caps[b, y, x, t], torch.tensor(want, dtype=torch.float64),
                                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("fused", [False, True])
def test_zero_bias_computes_exactly_the_default_layer(fused):
    """squash_bias = 0.0 adds an exact 0 before the squash: the same values and weight gradients, bit for bit,
    as the layer without it - the remedy's code path is the default's plus one add (on the PyTorch path and
    on the fused kernel alike)."""
    torch.manual_seed(2)
    plain = ConvCaps(3, 4, 3, 4, init_std=0.5, recompute=False)
    biased = ConvCaps(3, 4, 3, 4, init_std=0.5, recompute=False, squash_bias=0.0)
    biased.weight.data.copy_(plain.weight.data)
    plain.fused = biased.fused = fused
    u = torch.randn(2, 4, 4, 3, 4) * 0.5
    out_p, out_b = plain(u.requires_grad_()), biased(u)
    assert torch.equal(out_p, out_b)
    g = torch.randn_like(out_p)
    (out_p * g).sum().backward()
    (out_b * g).sum().backward()
    assert torch.equal(plain.weight.grad, biased.weight.grad)


# ---- (b) gradients: gradcheck, and the hand-written backward = autograd's loop ---------------------------

@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_convcaps_gradcheck_with_remedy(remedy):
    layer = _layer64(ConvCaps, seed=3, Cin=2, Din=3, Cout=2, Dout=3, iters=2, init_std=0.7, recompute=False,
                     **REMEDIES[remedy])
    u = (torch.randn(1, 3, 2, 2, 3, dtype=torch.float64) * 0.8).requires_grad_()
    params = {name: p.detach().clone().requires_grad_() for name, p in layer.named_parameters()}
    names = list(params)

    def f(u, *ps):
        return functional_call(layer, dict(zip(names, ps)), (u,))

    assert torch.autograd.gradcheck(f, (u, *params.values()))


@pytest.mark.parametrize("remedy", ["bias", "efficient", "all"])
def test_classcaps_gradcheck_with_remedy(remedy):
    kw = {k: v for k, v in REMEDIES[remedy].items() if k != "residual"}
    layer = _layer64(ClassCaps, seed=4, num_inputs=2 * 2 * 2, Din=3, num_classes=3, Dout=4, iters=3,
                     init_std=0.7, recompute=False, **kw)
    u = (torch.randn(2, 2, 2, 2, 3, dtype=torch.float64) * 0.8).requires_grad_()
    params = {name: p.detach().clone().requires_grad_() for name, p in layer.named_parameters()}
    names = list(params)
    assert torch.autograd.gradcheck(lambda u, *ps: functional_call(layer, dict(zip(names, ps)), (u,)),
                                    (u, *params.values()))


@pytest.mark.parametrize("squash_fn", ["sabour", "efficient"])
@pytest.mark.parametrize("iters", [1, 3])
def test_routing_function_with_bias_and_squash_passes_gradcheck_and_equals_the_loop(squash_fn, iters):
    torch.manual_seed(iters)
    u = (torch.randn(2, 3, 5, 4, dtype=torch.float64) * 0.8).requires_grad_()
    bias = (torch.randn(3, 4, dtype=torch.float64) * 0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, b: _RoutingFunction.apply(x, iters, EPS, b, squash_fn)[0], (u, bias))
    u2, b2 = u.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    v1, c1 = dynamic_routing(u, iters, bias=bias, squash_fn=squash_fn)
    v2, c2 = dynamic_routing(u2, iters, bias=b2, squash_fn=squash_fn, fused_backward=False)
    assert "Routing" in type(v1.grad_fn).__name__ and "Routing" not in type(v2.grad_fn).__name__
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-14)
    g = torch.randn_like(v1)
    (v1 * g).sum().backward()
    (v2 * g).sum().backward()
    torch.testing.assert_close(u.grad, u2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bias.grad, b2.grad, rtol=1e-10, atol=1e-12)
    assert bias.grad.abs().max() > 1e-3


def test_bias_alone_requiring_grad_takes_the_routing_function():
    """Votes without a gradient (a frozen layer below) still train the bias."""
    u = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    bias = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    v, _ = dynamic_routing(u, 3, bias=bias)
    v.sum().backward()
    assert bias.grad is not None and bias.grad.abs().max() > 0


# ---- (c) config hashes ---------------------------------------------------------------------------------

#: config_hash() of the profiles, computed before the remedies existed (the results store's cache keys).
BASELINE_HASHES = {
    ("cpu", None): "2a243d84b140",
    ("cpu", "authors"): "cbe48d186891",
    ("smoke", None): "82d97a2e3945",
    ("smoke", "authors"): "6519aa4f9ed0",
    ("fmnist", None): "112c3fd0f228",
    ("paper", None): "d954a33ce2a6",
}


@pytest.mark.parametrize("name,preset", list(BASELINE_HASHES))
def test_defaults_keep_every_baseline_hash(name, preset):
    cfg = profile(name, preset=preset)
    assert cfg.config_hash() == BASELINE_HASHES[(name, preset)]
    m = cfg.model
    assert (m.squash_bias, m.squash_fn, m.residual) == (None, "sabour", False)
    spelled = RunConfig(model=m.replace(squash_bias=None, squash_fn="sabour", residual=False), data=cfg.data,
                        train=cfg.train, profile=cfg.profile)
    assert spelled.config_hash() == BASELINE_HASHES[(name, preset)]


def test_each_remedy_changes_the_hash_and_is_recorded():
    base = profile("cpu", I=7)
    variants = [dict(squash_bias=0.1), dict(squash_bias=0.0), dict(squash_fn="efficient"), dict(residual=True),
                dict(squash_bias=0.1, squash_fn="efficient", residual=True)]
    hashes = {base.config_hash()} | {profile("cpu", I=7, **kw).config_hash() for kw in variants}
    assert len(hashes) == 1 + len(variants)
    cfg = profile("cpu", squash_bias=0.1, squash_fn="efficient", residual=True)
    flat = cfg.flat()
    assert (flat["model.squash_bias"], flat["model.squash_fn"], flat["model.residual"]) == (0.1, "efficient", True)
    assert "model.squash_bias" in profile("cpu").flat()  # recorded (as None) in every result row
    assert RunConfig.from_json(cfg.to_json()) == cfg
    # an integer initial value is the same config as its float
    assert profile("cpu", squash_bias=1).config_hash() == profile("cpu", squash_bias=1.0).config_hash()


# ---- (d) bad values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(squash_bias="0.1"), "squash_bias must be None"),
    (dict(squash_bias=float("nan")), "squash_bias must be None"),
    (dict(squash_bias=float("inf")), "squash_bias must be None"),
    (dict(squash_bias=True), "squash_bias must be None"),
    (dict(squash_fn="hinton"), r"squash_fn must be one of \('sabour', 'efficient'\)"),
    (dict(residual="yes"), "residual must be True or False"),
    (dict(routing="self", residual=True), "residual remedy dynamic routing"),
    (dict(routing="em", D=16, squash_bias=0.1, squash_fn="efficient"), "squash_bias, squash_fn remedy dynamic"),
])
def test_bad_config_values_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kw)
    assert issubclass(ConfigError, ValueError)


def test_bad_layer_arguments_are_refused():
    with pytest.raises(ValueError, match="squash_fn must be one of"):
        ConvCaps(2, 3, 2, 3, squash_fn="hinton")
    with pytest.raises(ValueError, match="squash_fn must be one of"):
        PrimaryCaps(4, 2, 3, squash_fn="")
    with pytest.raises(ValueError, match="squash_bias must be None or a finite number"):
        ClassCaps(8, 3, 4, squash_bias=float("inf"))
    with pytest.raises(ValueError, match=r"routing bias must be \(J, D\) = \(3, 4\)"):
        dynamic_routing(torch.randn(2, 3, 5, 4), 3, bias=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="squash_fn must be one of"):
        dynamic_routing(torch.randn(2, 3, 5, 4), 3, squash_fn="efficent")


# ---- (e) a CapsNet with each remedy trains -------------------------------------------------------------

def _net(**kw):
    cfg = profile("smoke", C=4, D=4, I=2, init_std=0.5, **kw).model
    torch.manual_seed(0)
    return cfg, CapsNet(cfg).train()


@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_capsnet_with_remedy_runs_forward_and_backward(remedy):
    kw = REMEDIES[remedy]
    cfg, model = _net(**kw)
    x, y = torch.randn(6, 1, 28, 28), torch.arange(6) % 10
    out = model(x)
    assert (out.lengths <= 1 + 1e-6).all()  # the class capsules are squashed, whatever the remedy (1.0 = rounded)
    margin_loss(out.lengths, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    biases = [m.bias for m in [*model.intermediate, model.classcaps]]
    if "squash_bias" in kw:
        assert [tuple(b.shape) for b in biases] == [(4, 4), (4, 4), (10, 16)]
        for b in biases:
            assert torch.equal(b.detach(), torch.full_like(b, 0.1))  # starts at the configured value
            assert b.grad.abs().max() > 0  # and receives a gradient
    else:
        assert biases == [None, None, None]
    assert model.primary.squash_fn == kw.get("squash_fn", "sabour")
    assert all(layer.residual == kw.get("residual", False) for layer in model.intermediate)


def test_bias_starts_at_any_configured_value_and_adds_only_its_parameters():
    _, plain = _net()
    _, biased = _net(squash_bias=-0.25)
    plain_params, biased_params = dict(plain.named_parameters()), dict(biased.named_parameters())
    extra = biased_params.keys() - plain_params.keys()
    assert extra == {"intermediate.0.bias", "intermediate.1.bias", "classcaps.bias"}
    assert (biased.classcaps.bias == -0.25).all()
    for name, p in plain_params.items():  # the same seed, the same weights: the bias draws no random numbers
        assert torch.equal(p, biased_params[name]), name


def test_parameter_groups_put_each_bias_in_its_layers_group():
    _, model = _net(squash_bias=0.1)
    groups = parameter_groups(model)
    assert list(groups) == ["backbone", "primary", "inter1", "inter2", "class"]  # no "other"
    assert any(p is model.intermediate[0].bias for p in groups["inter1"])
    assert any(p is model.intermediate[1].bias for p in groups["inter2"])
    assert any(p is model.classcaps.bias for p in groups["class"])
    out = model(torch.randn(4, 1, 28, 28))
    margin_loss(out.lengths, torch.arange(4)).backward()
    sig = gradient_signal(model, 1e-3)
    assert all(math.isfinite(v) for g in sig.values() for v in g.values())


# ---- (f) residual: where the shapes match, and skipped where they do not -------------------------------

@pytest.mark.parametrize("args", [
    dict(Cin=2, Din=3, Cout=3, Dout=3),  # more output types
    dict(Cin=2, Din=3, Cout=2, Dout=4),  # other output dims
    dict(Cin=2, Din=3, Cout=2, Dout=3, stride=2),  # smaller grid
    dict(Cin=2, Din=3, Cout=2, Dout=3, padding=0),  # smaller grid
])
def test_residual_is_skipped_where_the_shapes_differ(args):
    torch.manual_seed(6)
    with_res = ConvCaps(**args, residual=True, init_std=0.7)
    without = ConvCaps(**args, init_std=0.7)
    without.load_state_dict(with_res.state_dict())
    assert with_res.residual_requested and not with_res.residual and not with_res.keeps_shape
    u = torch.randn(2, 5, 5, 2, 3)
    assert torch.equal(with_res(u), without(u))


def test_residual_in_capsnet_adds_every_layers_input_after_the_squash():
    """Every IntermediateCaps of CapsNet[C, D, I] keeps its shape, the first one after PrimaryCaps included,
    so each adds its input; intermediate lengths may exceed 1, the class lengths never do."""
    cfg, model = _net(residual=True)
    plain_cfg = cfg.replace(residual=False)
    plain = CapsNet(plain_cfg).train()
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        u = out.capsules["primary"]
        for i, (layer, ref) in enumerate(zip(model.intermediate, plain.intermediate)):
            assert layer.residual and layer.keeps_shape
            torch.testing.assert_close(out.capsules[f"inter{i + 1}"], ref(u) + u, rtol=0, atol=0)
            u = out.capsules[f"inter{i + 1}"]
    lengths = out.capsules["inter2"].norm(dim=-1)
    assert (lengths < 3).all() and (out.lengths < 1).all()  # < l + 1 after l residual layers
    torch.manual_seed(8)
    big = torch.full((1, 3, 3, 2, 4), 0.49)  # length 0.98 in: routed (< 1) + 0.98 can pass 1
    layer = ConvCaps(2, 4, 2, 4, init_std=3.0, residual=True)
    assert layer(big).norm(dim=-1).max() > 1


# ---- (g) the fused kernel runs every remedy; the fallback for one it would lack ---------------------------

def _counting_route(monkeypatch):
    """Replace fused_routing.route by a wrapper that records each call; returns the list of calls."""
    calls = []
    route = fused_routing.route
    monkeypatch.setattr(fused_routing, "route", lambda *a, **k: calls.append(1) or route(*a, **k))
    return calls


def test_the_kernel_lacks_no_remedy():
    for kw in [*REMEDIES.values(), {}]:
        assert ConvCaps(2, 4, 2, 4, **kw).kernel_lacks is None
        assert ClassCaps(18, 4, 5, 8, **{k: v for k, v in kw.items() if k != "residual"}).kernel_lacks is None


@pytest.mark.skipif(not fused_routing.available(), reason=fused_routing.status())
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_layers_with_remedy_run_the_kernel_with_the_pytorch_paths_numbers(remedy, dtype, tol, monkeypatch):
    """ConvCaps (Dout 6: padded to 8) and ClassCaps with each remedy call the fused kernel, warn nothing, and
    give the PyTorch path's value and gradients (input, weights, biases)."""
    monkeypatch.setattr(fused_routing, "_warned", set())
    kw = REMEDIES[remedy]
    conv = _layer64(ConvCaps, seed=9, Cin=3, Din=4, Cout=3, Dout=6, init_std=0.5, **kw).to(dtype)
    cls = _layer64(ClassCaps, seed=10, num_inputs=4 * 4 * 3, Din=6, num_classes=5, Dout=12, init_std=0.5,
                   **{k: v for k, v in kw.items() if k != "residual"}).to(dtype)
    u = torch.randn(2, 4, 4, 3, 4, dtype=dtype) * 0.5
    params = [p for m in (conv, cls) for p in m.parameters()]
    assert len(params) == (4 if "squash_bias" in kw else 2)
    calls = _counting_route(monkeypatch)
    res = {}
    for fused in (True, False):
        conv.fused = cls.fused = fused
        x = u.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning
            y = cls(conv(x))
        g = torch.randn(y.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        res[fused] = (y, *torch.autograd.grad(y, (x, *params), g))
    assert len(calls) == 2  # ConvCaps and ClassCaps, fused; none unfused
    for a, b in zip(res[True], res[False]):
        assert ((a - b).abs().max() / b.abs().max()).item() < tol


def test_a_squash_the_kernel_lacks_falls_back_with_one_warning(monkeypatch):
    """The mechanism, with a kernel that knew only Sabour's squash: the layers with another squash take the
    PyTorch path, warn once naming it, and never call the kernel; a bias alone keeps the kernel."""
    monkeypatch.setattr(fused_routing, "_warned", set())
    monkeypatch.setattr(fused_routing, "SQUASHES", {"sabour": 0})
    calls = []
    monkeypatch.setattr(fused_routing, "route", lambda *a, **k: calls.append(a))  # must never be called
    kw = dict(squash_bias=0.1, squash_fn="efficient")
    conv, cls = ConvCaps(2, 4, 2, 4, init_std=0.5, **kw), ClassCaps(3 * 3 * 2, 4, 5, 8, init_std=0.5, **kw)
    name = "squash_fn='efficient'"
    assert conv.kernel_lacks == name and cls.kernel_lacks == name
    assert ConvCaps(2, 4, 2, 4, squash_bias=0.1).kernel_lacks is None
    u = torch.randn(2, 3, 3, 2, 4) * 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            cls(conv(u))
    ours = [w for w in caught if "fused CPU routing kernel" in str(w.message)]
    assert len(ours) == 1 and name in str(ours[0].message) and "PyTorch path" in str(ours[0].message)
    assert ours[0].category is RuntimeWarning
    assert calls == []


def test_remedies_without_the_kernel_fall_back_with_its_reason(monkeypatch):
    """No kernel (no compiler, CAPSLIB_FUSED_ROUTING=0, ...): the layers with remedies take the PyTorch path,
    warn once with the reason, and compute the slow reference's numbers."""
    monkeypatch.setattr(fused_routing, "_warned", set())
    monkeypatch.setattr(fused_routing, "_lib", None)
    monkeypatch.setattr(fused_routing, "_reason", "disabled for this test")
    calls = []
    monkeypatch.setattr(fused_routing, "route", lambda *a, **k: calls.append(a))  # must never be called
    kw = dict(squash_bias=0.1, squash_fn="efficient")
    layer = _layer64(ConvCaps, seed=11, Cin=2, Din=3, Cout=2, Dout=3, iters=2, init_std=0.7, **kw)
    u = torch.randn(1, 3, 3, 2, 3, dtype=torch.float64) * 0.8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [layer(u) for _ in range(2)]
    ours = [w for w in caught if "PyTorch path" in str(w.message)]
    assert len(ours) == 1 and "disabled for this test" in str(ours[0].message)
    assert calls == []
    want = ref_convcaps(u, layer.weight.detach(), 2, _bias_of(layer), "efficient")
    for out in outs:
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not fused_routing.available(), reason=fused_routing.status())
def test_residual_keeps_the_kernel_and_its_numbers(monkeypatch):
    monkeypatch.setattr(fused_routing, "_warned", set())
    torch.manual_seed(7)
    layer = ConvCaps(3, 4, 3, 4, init_std=0.5, residual=True, recompute=False)
    calls = _counting_route(monkeypatch)
    u1 = (torch.randn(2, 4, 4, 3, 4) * 0.5).requires_grad_()
    u2 = u1.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        out1 = layer(u1)
    assert calls == [1]
    layer.fused = False
    out2 = layer(u2)
    torch.testing.assert_close(out1, out2, rtol=1e-5, atol=1e-6)
    out1.sum().backward()
    out2.sum().backward()
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-4, atol=1e-6)
