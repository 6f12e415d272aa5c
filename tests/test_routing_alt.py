"""EM, self- and VB routing (capslib.engine.routing_alt): invariants, slow loop references, the model with
scalar activations, probes, the seed-002 depth study, and a real Fashion-MNIST accuracy check.

The references below are plain Python loops over capsules written from the papers' formulas
(Hinton et al. 2018, Procedure 1; Hahn et al. 2019, SR-CapsNet; Ribeiro et al. 2020, Algorithm 1
with Bishop 10.46-10.63), not from the vectorised code.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from capslib.engine.config import ConfigError, ModelConfig, profile
from capslib.engine.model import CapsNet
from capslib.engine.probes import ActivationProbe, probe_model
from capslib.engine.routing_alt import (EMClassCaps, EMConvCaps, SelfRoutingClassCaps, SelfRoutingConvCaps, VBClassCaps,
                                        VBConvCaps, em_routing, self_routing, spread_loss, spread_margin,
                                        vb_routing)

torch.set_default_dtype(torch.float32)
EPS = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP's second thread mostly waits (F.unfold of a
    (64, 64, 6, 6) map took 0.75 s with 2 threads and 4 ms with 1). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ slow, plain-loop references

def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    z = sum(e)
    return [x / z for x in e]


def digamma(x):
    """ψ(x) by recurrence to x >= 6 and the asymptotic series (error < 1e-12)."""
    r = 0.0
    while x < 6:
        r -= 1 / x
        x += 1
    f = 1 / (x * x)
    return r + math.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252 - f * (1 / 240 - f / 132))))


def matmul(A, B):
    return [[sum(A[i][k] * B[k][j] for k in range(len(B))) for j in range(len(B[0]))] for i in range(len(A))]


def matrix_vote(u, W):
    """V = M W for the pose u (P·P row-major) and W (P×P): returns P·P floats."""
    P = len(W)
    M = [u[r * P:(r + 1) * P] for r in range(P)]
    return [x for row in matmul(M, W) for x in row]


def ref_em(votes, a, beta_u, beta_a, iters, final_lambda=1.0):
    """votes[k][j] (D floats), a[k]. Returns (a_out[j], mu[j][h], R[k][j]) after ``iters`` M-steps."""
    K, J, D = len(votes), len(votes[0]), len(votes[0][0])
    R = [[1 / J] * J for _ in range(K)]
    for t in range(iters):
        lam = final_lambda * (1 - 0.95 ** (t + 1))
        acts, mus, vs = [], [], []
        for j in range(J):
            ra = [R[k][j] * a[k] for k in range(K)]  # R_ij <- R_ij a_i
            rs = sum(ra)
            mu = [sum(ra[k] * votes[k][j][h] for k in range(K)) / (rs + EPS) for h in range(D)]
            var = [sum(ra[k] * (votes[k][j][h] - mu[h]) ** 2 for k in range(K)) / (rs + EPS) + EPS for h in range(D)]
            cost = sum((beta_u[j] + math.log(math.sqrt(var[h]))) * rs / (K / J) for h in range(D))
            acts.append(sigmoid(lam * (beta_a[j] - cost)))
            mus.append(mu)
            vs.append(var)
        if t == iters - 1:
            return acts, mus, R
        for k in range(K):  # E-step
            logits = []
            for j in range(J):
                lp = sum(-0.5 * math.log(2 * math.pi * vs[j][h]) - (votes[k][j][h] - mus[j][h]) ** 2 / (2 * vs[j][h])
                         for h in range(D))
                logits.append(math.log(acts[j] + EPS) + lp)
            R[k] = softmax(logits)


def ref_self(u, a, W_pose, W_route, b_route):
    """Children k with pose u[k], activation a[k]; W_pose[k][j] (Dout×Din) or None; W_route[k][j] (Din)."""
    K, J = len(u), len(W_route[0])
    c = [softmax([sum(W_route[k][j][d] * u[k][d] for d in range(len(u[k]))) + b_route[k][j] for j in range(J)])
         for k in range(K)]
    a_out = [sum(a[k] * c[k][j] for k in range(K)) / (sum(a) + EPS) for j in range(J)]
    pose = None
    if W_pose is not None:
        pose = []
        for j in range(J):
            w = [a[k] * c[k][j] for k in range(K)]
            votes = [[sum(W_pose[k][j][e][d] * u[k][d] for d in range(len(u[k]))) for e in range(len(W_pose[k][j]))]
                     for k in range(K)]
            pose.append([sum(w[k] * votes[k][e] for k in range(K)) / (sum(w) + EPS) for e in range(len(votes[0]))])
    return a_out, pose, c


def ref_vb(votes, a, beta_u, beta_a, iters, alpha0=1.0, kappa0=1.0, psi0=1.0, nu0=None):
    """Bishop's VB updates for a mixture of diagonal Gaussians, per parent j, with γ_ij a_i as data weights."""
    K, J, D = len(votes), len(votes[0]), len(votes[0][0])
    nu0 = D + 1 if nu0 is None else nu0
    g = [[1 / J] * J for _ in range(K)]
    for t in range(iters):
        st = []
        for j in range(J):
            r = [g[k][j] * a[k] for k in range(K)]
            N = sum(r)
            xbar = [sum(r[k] * votes[k][j][h] for k in range(K)) / (N + EPS) for h in range(D)]
            NS = [sum(r[k] * (votes[k][j][h] - xbar[h]) ** 2 for k in range(K)) for h in range(D)]
            alpha, kappa, nu = alpha0 + N, kappa0 + N, nu0 + N
            m = [N * xbar[h] / kappa for h in range(D)]
            inv_psi = [1 / psi0 + NS[h] + kappa0 * N / kappa * xbar[h] ** 2 for h in range(D)]
            e_ln_det = sum(digamma((nu - d) / 2) for d in range(D)) + D * math.log(2) - sum(math.log(x) for x in inv_psi)
            st.append(dict(alpha=alpha, kappa=kappa, nu=nu, m=m, inv_psi=inv_psi, e_ln_det=e_ln_det))
        A = sum(s["alpha"] for s in st)
        e_ln_pi = [digamma(s["alpha"]) - digamma(A) for s in st]
        if t == iters - 1:
            break
        for k in range(K):
            lr = []
            for j, s in enumerate(st):
                q = D / s["kappa"] + s["nu"] * sum((votes[k][j][h] - s["m"][h]) ** 2 / s["inv_psi"][h] for h in range(D))
                lr.append(e_ln_pi[j] + 0.5 * s["e_ln_det"] - 0.5 * D * math.log(2 * math.pi) - 0.5 * q)
            g[k] = softmax(lr)
    logits = []
    for j, s in enumerate(st):
        H = 0.5 * D * math.log(2 * math.pi * math.e) - 0.5 * s["e_ln_det"]
        logits.append(beta_a[j] - (beta_u[j] + math.exp(e_ln_pi[j]) * H))
    return logits, [s["m"] for s in st], g


def conv_children(u, a, y, x, Cin, kernel=3, pad=1):
    """The k×k×Cin window of (pose, activation) children of output (y, x); zero outside the grid."""
    H, W = len(u), len(u[0])
    kids = []
    for ky in range(kernel):
        for kx in range(kernel):
            yy, xx = y + ky - pad, x + kx - pad
            for i in range(Cin):
                inside = 0 <= yy < H and 0 <= xx < W
                kids.append((u[yy][xx][i] if inside else [0.0] * len(u[0][0][0]), a[yy][xx][i] if inside else 0.0))
    return kids


def ref_conv(layer_kind, u, a, layer, iters=2):
    """Loop reference of one conv capsule layer's routing: returns (a, pose, coeff) like layer.route()."""
    B, H, W, Cin, D = u.shape
    ul, al = u.double().tolist(), a.double().tolist()
    outs = []
    for b in range(B):
        for y in range(H):
            for x in range(W):
                kids = conv_children(ul[b], al[b], y, x, Cin)
                outs.append(ref_children(layer_kind, [k[0] for k in kids], [k[1] for k in kids], layer, iters))
    return outs


def ref_children(kind, us, acts, layer, iters):
    J = layer.Cout
    if kind == "self":
        Wp = layer.weight.double().tolist() if layer.weight is not None else None
        a_o, pose, c = ref_self(us, acts, Wp, layer.route_weight.double().tolist(), layer.route_bias.double().tolist())
        return a_o, pose, c
    Wm = layer.weight.double().tolist()
    votes = [[matrix_vote(us[k], Wm[k][j]) for j in range(J)] for k in range(len(us))]
    bu, ba = layer.beta_u.double().tolist(), layer.beta_a.double().tolist()
    if kind == "em":
        return ref_em(votes, acts, bu, ba, iters, layer.final_lambda)
    return ref_vb(votes, acts, bu, ba, iters)


def check_against_reference(out, grid, refs, J, D, with_pose=True):
    n = len(refs)
    got_a = out.a.double().reshape(n, J)
    want_a = torch.tensor([r[0] for r in refs], dtype=torch.float64)
    torch.testing.assert_close(got_a, want_a, rtol=1e-4, atol=1e-5)
    want_c = torch.tensor([r[2] for r in refs], dtype=torch.float64).transpose(1, 2)  # (n, J, K)
    torch.testing.assert_close(out.coeff.double(), want_c, rtol=1e-4, atol=1e-5)
    if with_pose:
        want_p = torch.tensor([r[1] for r in refs], dtype=torch.float64)
        torch.testing.assert_close(out.pose.double().reshape(n, J, D), want_p, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- invariants

ROUTERS = ["em", "self", "vb"]


def run_router(kind, votes, a, iters=3):
    J = votes.shape[1]
    if kind == "em":
        return em_routing(votes, a, torch.zeros(J), torch.zeros(J), iters)
    if kind == "vb":
        return vb_routing(votes, a, torch.zeros(J), torch.zeros(J), iters)
    logits = torch.randn(votes.shape[0], J, votes.shape[2])
    return self_routing(votes, logits, a)


@pytest.mark.parametrize("kind", ROUTERS)
def test_coefficients_normalised_over_the_parents(kind):
    torch.manual_seed(0)
    votes, a = torch.randn(5, 7, 11, 4), torch.rand(5, 11)  # (n, J parents, K children, D)
    out = run_router(kind, votes, a)
    assert out.coeff.shape == (5, 7, 11)
    torch.testing.assert_close(out.coeff.sum(dim=1), torch.ones(5, 11))  # over the parent axis J
    assert not torch.allclose(out.coeff.sum(dim=2), torch.ones(5, 7))  # not over the children
    assert out.pose.shape == (5, 7, 4)


@pytest.mark.parametrize("kind", ["em", "self"])
def test_activations_in_range(kind):
    torch.manual_seed(1)
    out = run_router(kind, torch.randn(6, 5, 9, 4) * 3, torch.rand(6, 9))
    assert ((out.a > 0) & (out.a < 1)).all()
    if kind == "self":  # SR-CapsNet: Σ_j a_j = Σ_i a_i Σ_j c_ij / Σ_i a_i = 1
        torch.testing.assert_close(out.a.sum(dim=1), torch.ones(6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,args", [
    (EMConvCaps, dict(Cin=3, Cout=4, D=4)), (VBConvCaps, dict(Cin=3, Cout=4, D=4)),
    (SelfRoutingConvCaps, dict(Cin=3, Din=4, Cout=4, Dout=4)),
])
def test_layer_activations_in_range_and_poses_shaped(cls, args):
    torch.manual_seed(2)
    layer = cls(**args, recompute=False)
    a, pose = layer(torch.rand(3, 5, 4, 3), torch.randn(3, 5, 4, 3, 4))
    assert a.shape == (3, 5, 4, 4) and pose.shape == (3, 5, 4, 4, 4)
    assert ((a >= 0) & (a <= 1)).all() and torch.isfinite(pose).all()


@pytest.mark.parametrize("kind", ROUTERS)
def test_zero_votes_and_zero_activations_no_nan(kind):
    votes = torch.zeros(3, 4, 6, 4, requires_grad=True)
    a = torch.zeros(3, 6, requires_grad=True)
    out = run_router(kind, votes, a)
    assert torch.isfinite(out.a).all() and torch.isfinite(out.pose).all() and torch.isfinite(out.coeff).all()
    (out.a.sum() + out.pose.sum()).backward()
    assert torch.isfinite(votes.grad).all() and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("routing", ROUTERS)
def test_model_zero_image_no_nan_train_and_eval(routing):
    torch.manual_seed(3)
    model = CapsNet(ModelConfig(C=3, D=4, I=2, routing=routing))
    out = model(torch.zeros(4, 1, 28, 28))  # training mode: BatchNorm on a constant batch
    out.lengths.sum().backward()
    assert all(torch.isfinite(v).all() for v in out.activations.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    out = model(torch.zeros(2, 1, 28, 28))
    assert torch.isfinite(out.lengths).all() and all(torch.isfinite(v).all() for v in out.capsules.values())


def test_em_inverse_temperature_schedule_and_spread_loss():
    from capslib.engine.routing_alt import em_lambda

    assert [round(em_lambda(t, 0.01), 6) for t in range(3)] == [0.0005, 0.000975, 0.001426]
    assert spread_margin(0) == pytest.approx(0.2) and spread_margin(1) == pytest.approx(0.9)
    scores = torch.tensor([[0.9, 0.5, 0.85], [0.1, 0.2, 0.3]])
    y = torch.tensor([0, 2])
    # row 0: others 0.5 (gap .4 >= .2: 0), 0.85 (gap .05: (.2-.05)^2 = .0225); row 1: (.2-.2)^2 + (.2-.1)^2 = .01
    assert spread_loss(scores, y, 0.2).item() == pytest.approx((0.0225 + 0.01) / 2)


# ------------------------------------------------------------- slow references (one layer, loops)

def _inputs(seed, B=1, H=3, W=2, C=2, D=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, H, W, C, generator=g) * 0.9 + 0.05, torch.randn(B, H, W, C, D, generator=g)


@pytest.mark.parametrize("iters", [1, 2])
def test_em_convcaps_matches_slow_loop(iters):
    torch.manual_seed(10 + iters)
    layer = EMConvCaps(Cin=2, Cout=3, D=4, iters=iters, init_std=0.7, recompute=False)
    with torch.no_grad():
        layer.beta_u.normal_(0, 0.3)
        layer.beta_a.normal_(0, 0.3)
    a, pose = _inputs(iters)
    out, grid = layer.route(a, pose)
    assert grid == (1, 3, 2)
    check_against_reference(out, grid, ref_conv("em", pose, a, layer, iters), 3, 4)


@pytest.mark.parametrize("iters", [1, 2])
def test_vb_convcaps_matches_slow_loop(iters):
    torch.manual_seed(20 + iters)
    layer = VBConvCaps(Cin=2, Cout=3, D=4, iters=iters, init_std=0.7, recompute=False)
    with torch.no_grad():
        layer.beta_u.normal_(0, 0.3)
        layer.beta_a.normal_(0, 0.3)
    a, pose = _inputs(5 + iters)
    out, grid = layer.route(a, pose)
    check_against_reference(out, grid, ref_conv("vb", pose, a, layer, iters), 3, 4)


def test_self_routing_convcaps_matches_slow_loop():
    torch.manual_seed(30)
    layer = SelfRoutingConvCaps(Cin=2, Din=4, Cout=3, Dout=5, init_std=0.7, recompute=False)
    with torch.no_grad():  # the routing network starts at zero (uniform routing); make it non-trivial
        layer.route_weight.normal_(0, 0.8)
        layer.route_bias.normal_(0, 0.5)
    a, pose = _inputs(9)
    out, grid = layer.route(a, pose)
    check_against_reference(out, grid, ref_conv("self", pose, a, layer), 3, 5)


@pytest.mark.parametrize("kind", ROUTERS)
def test_class_layers_match_slow_loop(kind):
    torch.manual_seed(40)
    a, pose = _inputs(11, B=2, H=2, W=2, C=2, D=4)
    K = 2 * 2 * 2
    layer = {"em": lambda: EMClassCaps(K, 3, D=4, iters=2, init_std=0.7, recompute=False),
             "vb": lambda: VBClassCaps(K, 3, D=4, iters=2, init_std=0.7, recompute=False),
             "self": lambda: SelfRoutingClassCaps(K, 4, 3, recompute=False)}[kind]()
    if kind == "self":
        with torch.no_grad():
            layer.route_weight.normal_(0, 0.8)
    out, grid = layer.route(a, pose)
    assert grid == (2,)
    refs = []
    ul, al = pose.double().tolist(), a.double().tolist()
    for b in range(2):  # child order: (y, x, type), as ClassCaps' weight rows
        us = [ul[b][y][x][i] for y in range(2) for x in range(2) for i in range(2)]
        acts = [al[b][y][x][i] for y in range(2) for x in range(2) for i in range(2)]
        refs.append(ref_children(kind, us, acts, layer, 2))
    check_against_reference(out, grid, refs, 3, 4, with_pose=kind != "self")
    if kind == "self":
        assert out.pose is None  # SR-CapsNet's class layer has no pose (pose_out=False)


@pytest.mark.parametrize("cls,args,shape", [
    (EMConvCaps, dict(Cin=2, Cout=3, D=4), (2, 4, 4, 2, 4)),
    (VBClassCaps, dict(num_inputs=32, num_classes=5, D=4), (2, 4, 4, 2, 4)),
    (SelfRoutingConvCaps, dict(Cin=2, Din=4, Cout=3, Dout=4), (2, 4, 4, 2, 4)),
])
def test_recompute_gives_identical_values_and_gradients(cls, args, shape):
    torch.manual_seed(0)
    a1, b1 = cls(**args, recompute=False), cls(**args, recompute=True)
    b1.load_state_dict(a1.state_dict())
    act = torch.rand(shape[:-1], requires_grad=True)
    pose = torch.randn(shape, requires_grad=True)
    o1, o2 = a1(act, pose), b1(act, pose)
    torch.testing.assert_close(o1[0], o2[0])
    (o1[0].sum() + o1[1].pow(2).sum()).backward()
    g1 = [act.grad.clone(), pose.grad.clone(), a1.weight.grad.clone()]
    act.grad = pose.grad = None
    (o2[0].sum() + o2[1].pow(2).sum()).backward()
    for x, y in zip(g1, [act.grad, pose.grad, b1.weight.grad]):
        torch.testing.assert_close(x, y)


# ---------------------------------------------------------------------- model, config, probes

@pytest.mark.parametrize("routing", ROUTERS)
def test_model_structure_and_outputs(routing):
    C, D, I = 3, 4, 2
    model = CapsNet(ModelConfig(C=C, D=D, I=I, routing=routing))
    out = model(torch.randn(2, 1, 28, 28))
    assert list(out.activations) == ["primary", "inter1", "inter2", "class"]
    for name in ("primary", "inter1", "inter2"):
        assert out.activations[name].shape == (2, 6, 6, C) and out.capsules[name].shape == (2, 6, 6, C, D)
    assert out.activations["class"].shape == (2, 1, 1, 10)
    torch.testing.assert_close(out.lengths, out.activations["class"][:, 0, 0])  # the class scores
    assert ((out.lengths >= 0) & (out.lengths <= 1)).all()
    assert model.primary.conv.out_channels == C * D  # the shared PrimaryCaps conv gives the poses
    if routing in ("em", "vb"):
        assert model.intermediate[0].weight.shape == (9 * C, C, 2, 2)  # one P×P matrix per (child, parent)
        assert model.classcaps.weight.shape == (36 * C, 10, 2, 2)
        assert out.class_caps.shape == (2, 10, D)
    else:
        assert model.intermediate[0].weight.shape == (9 * C, C, D, D)
        assert out.class_caps.shape == (2, 10, 1)


# every field added after the first results were stored, each kept out of the hash at its default
NEW_FIELDS = {"model": ("em_final_lambda", "vb_alpha0", "vb_kappa0", "vb_psi0", "vb_nu0", "convcaps_layout",
                        "class_init_std", "squash_eps", "prune_rule", "chip_estimator", "prune_bn",
                        "squash_bias", "squash_fn", "residual"),
              "train": ("loss", "dtype", "patience")}


def legacy_hash(cfg):
    """config_hash as it was before the routing fields existed."""
    import hashlib

    d = cfg.to_dict()
    d["data"].pop("root")
    d["train"].pop("device")
    d.pop("profile")
    for part, names in NEW_FIELDS.items():
        for n in names:
            d[part].pop(n)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def test_dynamic_model_and_hashes_unchanged():
    out = CapsNet(ModelConfig(C=3, D=4, I=1))(torch.randn(2, 1, 28, 28))
    assert out.activations is None
    for cfg in (profile("smoke"), profile("fmnist", C=20, I=6), profile("paper", alpha=0.01)):
        assert cfg.config_hash() == legacy_hash(cfg)  # cached dynamic-routing results stay valid
        assert not any(k.endswith(("em_final_lambda", "vb_nu0", "train.loss")) for k in cfg.flat())
    em = profile("smoke", routing="em", D=16)
    assert em.config_hash() != em.replace(model=em.model.replace(em_final_lambda=0.5)).config_hash()
    assert "model.em_final_lambda" in em.flat()


@pytest.mark.parametrize("kwargs,words", [
    (dict(routing="capsule"), ["routing must be one of"]),
    (dict(routing="em", D=8), ["D must be a square", "D=8"]),
    (dict(routing="vb", D=1), ["D must be a square"]),
    (dict(routing="self", capsule_layout="reshape"), ["capsule_layout"]),
    (dict(em_final_lambda=0.0), ["em_final_lambda"]),
    (dict(vb_nu0=2.0, D=16), ["vb_nu0"]),
])
def test_bad_routing_configs(kwargs, words):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_loss_auto_resolves_by_routing():
    assert profile("smoke").loss == "margin"
    assert profile("smoke", routing="self").loss == "margin"
    assert profile("smoke", routing="em", D=16).loss == "spread"
    assert profile("smoke", routing="vb", D=16, loss="margin").loss == "margin"
    with pytest.raises(ConfigError, match="loss must be"):
        profile("smoke", loss="hinge")


def test_probe_uses_scalar_activations_with_threshold():
    # type 0: activation 0.5 everywhere; type 1: 0.005 (dead, <= 0.01); type 2: 0.02 (alive).
    # The poses are long for every type, so a length-based probe would call none dead.
    a = torch.tensor([0.5, 0.005, 0.02]).expand(4, 2, 2, 3).contiguous()
    pose = torch.ones(4, 2, 2, 3, 16)
    p = ActivationProbe()
    p.update({"L": pose[:2], "V": pose[:2]}, {"L": a[:2]})
    p.update({"L": pose[2:], "V": pose[2:]}, {"L": a[2:]})
    r = p.result()
    for d in ("paper000", "paper002"):
        np.testing.assert_allclose(r.activations[d]["L"], [0.5, 0.005, 0.02], atol=1e-12)
        np.testing.assert_allclose(r.activations[d]["V"], [4.0, 4.0, 4.0])  # vector capsules: lengths
    assert r.dead_fraction() == {"L": pytest.approx(1 / 3), "V": 0.0}


def test_probe_model_reads_the_model_activations():
    torch.manual_seed(4)
    model = CapsNet(ModelConfig(C=3, D=4, I=1, routing="em"))
    x = torch.randn(6, 1, 28, 28)
    res = probe_model(model, [(x, torch.zeros(6, dtype=torch.long))])
    model.eval()
    with torch.no_grad():
        want = model(x).activations["inter1"].mean(dim=(0, 1, 2)).double().numpy()
    np.testing.assert_allclose(res.activations["paper002"]["inter1"], want, rtol=1e-6)
    assert res.layers == ["primary", "inter1", "class"]


# -------------------------------------------------------------------- depth study (tiny, real data)

def test_seed002_experiment_grid():
    from capslib.experiments.grids import EXPERIMENTS

    exp = EXPERIMENTS["seed002_depth"]
    smoke, full = exp.grid("smoke"), exp.grid("fmnist")
    assert len(smoke) == 4 * 3 and len(full) == 4 * 10
    cfgs = [p.config("fmnist") for p in full]
    assert {c.model.routing for c in cfgs} == {"dynamic", "em", "self", "vb"}
    assert sorted({c.model.I for c in cfgs}) == list(range(1, 11))
    assert {(c.model.C, c.model.D) for c in cfgs} == {(16, 16)}  # 16 capsule types, 4×4 poses (§3.1)
    assert all(p.kind == "snapshots" for p in smoke + full)
    small = smoke[0].config("smoke")
    assert (small.model.C, small.model.D, small.train.epochs, small.data.train_size) == (4, 9, 2, 2000)


TINY = dict(train_size=256, val_size=128, test_size=128, epochs=2, batch_size=64)


def test_depth_study_rows_frame_and_figures(real_data_root, tmp_path):
    from matplotlib.figure import Figure

    from capslib.book.chapters.routing import (activation_panels, deepest_runs, plot_capsule_activation_grid,
                                               plot_capsule_activations, plot_depth_study)
    from capslib.experiments.depth_study import depth_frame, depth_study
    from capslib.experiments.results import ResultsStore

    rows = depth_study("self", depths=(1, 2), profile="smoke", results_root=str(tmp_path), **TINY)
    assert [r["model.I"] for r in rows] == [1, 2]
    for r in rows:
        assert r["routing"] == "self" and r["loss"] == "margin" and r["experiment"] == "seed002_depth"
        assert r["kind"] == "snapshots"
        first, last, test = (json.loads(r[k]) for k in ("acts_first", "acts_last", "acts_test"))
        assert list(first) == ["primary"] + [f"inter{i + 1}" for i in range(r["model.I"])] + ["class"]
        assert first != last  # epoch 1 and epoch 2 differ
        assert all(len(v) == 4 for k, v in first.items() if k != "class") and len(first["class"]) == 10
        assert 0 <= r["dead_caps"] <= 4
        # dead_caps is the mean over the ConvCaps layers of the test-split types at or below 0.01
        want = np.mean([np.sum(np.asarray(v) <= 0.01) for k, v in test.items() if k.startswith("inter")])
        assert r["dead_caps"] == pytest.approx(want)
    store = ResultsStore.for_experiment("seed002_depth", "smoke", str(tmp_path))
    again = depth_study("self", depths=(1, 2), profile="smoke", results_root=str(tmp_path), **TINY)  # from the store
    assert [r["run_key"] for r in again] == [r["run_key"] for r in rows]
    assert [float(r["wall_time"]) for r in again] == pytest.approx([r["wall_time"] for r in rows])
    assert len(store.read()) == 2  # nothing retrained or appended
    df = depth_frame(again)
    assert list(df["depth"]) == [1, 2] and set(df["routing"]) == {"self"}
    assert df["test_acc"].between(0, 1).all() and df["dead_caps"].notna().all()
    weakest = [min(np.mean(v) for k, v in json.loads(r["acts_test"]).items() if k.startswith("inter")) for r in rows]
    np.testing.assert_allclose(df["weakest_act"], weakest, rtol=1e-12)
    fig = plot_capsule_activations(rows[-1])
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # two panels and the colour bar
    assert len(fig.axes[0].collections) == 3  # primary, inter1, inter2: one row of circles each
    assert plot_depth_study(df).axes[0].get_xlabel() == "ConvCaps layers"
    assert [r["model.I"] for r in deepest_runs(again)] == [2]
    grid = plot_capsule_activation_grid(deepest_runs(again))
    assert len(grid.axes) == 3  # one pair of panels and the colour bar
    assert set(activation_panels(again)) == {("self", 1), ("self", 2)}


def test_sweep_point_and_depth_study_share_rows(real_data_root, tmp_path):
    """A seed002_depth sweep point writes the row depth_study would (same key, same activations)."""
    from capslib.experiments.depth_study import depth_config, depth_study
    from capslib.experiments.grids import seed002_point
    from capslib.experiments.sweeps import run_point

    cfg = depth_config("em", 1, **TINY)
    (row,) = run_point("seed002_depth", seed002_point("em", 1, "smoke"), cfg, checkpoint_root=str(tmp_path / "ck"))
    (ref,) = depth_study("em", depths=(1,), results_root=str(tmp_path / "res"), **TINY)
    assert row["run_key"] == ref["run_key"] and row["point_key"] == ref["point_key"]
    for k in ("test_acc", "acts_first", "acts_last", "acts_test", "dead_caps", "loss"):
        assert row[k] == ref[k], k
    assert row["loss"] == "spread"


def test_snapshots_resume_after_a_crash(real_data_root, tmp_path):
    """Killed after epoch 1 (before or after its snapshot was saved), a run resumes to the same numbers."""
    from capslib.engine.data import load_splits
    from capslib.experiments.depth_study import depth_config, fit_with_snapshots
    from capslib.engine.train import fit

    cfg = depth_config("vb", 1, **TINY)
    data = load_splits(cfg.data)
    ref, _, first, last = fit_with_snapshots(cfg, data=data)
    assert first != last

    crashed = tmp_path / "a"  # the process died after epoch 1, before the snapshot was written
    fit(cfg, data=data, checkpoint_dir=crashed, progress=False, stop_after_epochs=1)
    got = fit_with_snapshots(cfg, data=data, checkpoint_dir=crashed)
    assert (got[0].test_acc, got[2], got[3]) == (ref.test_acc, first, last)
    assert (crashed / "acts_first.json").exists()
    again = fit_with_snapshots(cfg, data=data, checkpoint_dir=crashed)  # finished: nothing left to train
    assert (again[0].test_acc, again[2], again[3]) == (ref.test_acc, first, last)

    def metrics(history):
        return [{k: v for k, v in h.items() if k != "wall_time"} for h in history]

    assert metrics(again[0].history) == metrics(got[0].history) == metrics(ref.history)

    lost = tmp_path / "b"  # a finished run whose epoch-1 snapshot is gone cannot be completed honestly
    fit(cfg, data=data, checkpoint_dir=lost, progress=False)
    with pytest.raises(ValueError, match="epoch-1 activations"):
        fit_with_snapshots(cfg, data=data, checkpoint_dir=lost)


def test_routing_comparison_trains_once_then_reads(real_data_root, tmp_path):
    from capslib.experiments.depth_study import depth_frame, routing_comparison

    tiny = dict(train_size=128, val_size=64, test_size=64, epochs=1, batch_size=64)
    kw = dict(routings=("self", "dynamic"), depths=(1,), profile="smoke", results_root=str(tmp_path), **tiny)
    rows = routing_comparison(**kw)
    df = depth_frame(rows)
    assert list(df["routing"]) == ["dynamic", "self"] and list(df["loss"]) == ["margin", "margin"]
    assert set(df.columns) >= {"routing", "dataset", "depth", "test_acc", "dead_caps", "dead_frac", "weakest_act"}
    again = routing_comparison(**kw)  # from the store: the same rows, wall times included (no training)
    pd.testing.assert_frame_equal(df, depth_frame(again))
    with pytest.raises(ValueError, match="at least one routing"):
        routing_comparison(routings=(), depths=(1,))


# --------------------------------------------------------------- real data: each algorithm learns

@pytest.mark.slow
@pytest.mark.parametrize("routing", ROUTERS)
def test_real_fashion_mnist_depth1_beats_chance_by_40_points(real_data_root, routing):
    """Depth 1 (one ConvCaps layer), 4 capsule types, D = 9 (3×3 poses for EM and VB), one epoch on
    5,000 real Fashion-MNIST images, Adam lr 3e-3 (the seed002_depth smoke point, with one epoch on the
    smoke profile's 5,000 images instead of its two on 2,000): >= 50% on 1,000
    test images. Spread loss for EM and VB, margin loss for self-routing (train.loss="auto")."""
    from capslib.engine.config import apply_overrides
    from capslib.experiments.grids import seed002_point
    from capslib.engine.train import fit

    cfg = apply_overrides(seed002_point(routing, 1, "smoke").config("smoke"), epochs=1, train_size=5000, val_size=1000)
    assert (cfg.model.C, cfg.model.D, cfg.model.I, cfg.train.epochs, cfg.train.lr) == (4, 9, 1, 1, 0.003)
    assert (cfg.data.train_size, cfg.data.test_size) == (5000, 1000)
    r, _ = fit(cfg, progress=False)
    print(f"{routing}: test accuracy {r.test_acc:.3f} after 1 epoch, {r.wall_time:.0f}s, {cfg.loss} loss")
    assert r.test_acc >= 0.50


def test_the_init_probe_is_the_untrained_model_fit_builds(real_data_root):
    """``probe_init`` probes the model ``fit`` starts from (built here the way ``fit`` builds it), and its dead
    fractions are the shares of types with a mean activation ≤ 0.01 (seed 002, eq. 12)."""
    import torch

    from capslib.engine.data import load_splits
    from capslib.engine.model import CapsNet
    from capslib.engine.train import evaluate
    from capslib.experiments.depth_study import depth_config, probe_init

    cfg = depth_config("self", 2, **TINY)
    data = load_splits(cfg.data)
    acts, dead = probe_init(cfg, data)
    torch.manual_seed(cfg.train.seed)
    fresh = CapsNet(cfg.model)
    ref = evaluate(fresh, data, "val", probe=True)[1].activations["paper002"]
    assert acts == {k: [float(v) for v in vals] for k, vals in ref.items()}
    for layer, vals in acts.items():
        assert dead[layer] == pytest.approx(sum(v <= 0.01 for v in vals) / len(vals))
    assert {"inter1", "inter2"} <= set(dead)
