"""Slow, obviously correct references for capsule layers: plain Python loops over capsules, in float64.

Shared by the routing and remedy tests, which check the library's vectorised (and fused) layers against them.
"""
from __future__ import annotations

import math

import torch

from capslib.engine.routing import SQUASH_EPS


def ref_squash(s: list[float], fn: str = "sabour", eps: float = SQUASH_EPS) -> list[float]:
    """Sabour: ‖s‖²/(1+‖s‖²) · s/sqrt(‖s‖²+ε); efficient: (1 − e^(−n)) · s/n with n = sqrt(‖s‖²+ε)."""
    n2 = sum(x * x for x in s)
    if fn == "sabour":
        return [n2 / (1 + n2) * x / math.sqrt(n2 + eps) for x in s]
    n = math.sqrt(n2 + eps)
    return [(1 - math.exp(-n)) * x / n for x in s]


def ref_route(votes, iters, bias=None, fn="sabour"):
    """votes[k][j] = D floats; softmax over parents j; s_j = Σ_k c_kj votes[k][j] + bias[j] before the squash."""
    K, J, D = len(votes), len(votes[0]), len(votes[0][0])
    b = [[0.0] * J for _ in range(K)]
    v = None
    for r in range(iters):
        c = []
        for k in range(K):
            m = max(b[k])
            e = [math.exp(x - m) for x in b[k]]
            c.append([x / sum(e) for x in e])
        v = []
        for j in range(J):
            s = [sum(c[k][j] * votes[k][j][d] for k in range(K)) for d in range(D)]
            if bias is not None:
                s = [s[d] + bias[j][d] for d in range(D)]
            v.append(ref_squash(s, fn))
        if r < iters - 1:
            for k in range(K):
                for j in range(J):
                    b[k][j] += sum(votes[k][j][d] * v[j][d] for d in range(D))
    return v


def matvec(Wm, x):
    return [sum(Wm[d][e] * x[e] for e in range(len(x))) for d in range(len(Wm))]


def ref_convcaps(u, W, iters, bias=None, fn="sabour", residual=False, kernel=3, pad=1):
    """k×k, stride 1, zero padding, per output location, per input capsule in the window, per output type; the
    residual adds the input capsule at the same location and type."""
    B, H, Wd, Cin, Din = u.shape
    Cout, Dout = W.shape[1], W.shape[2]
    ul, Wl = u.double().tolist(), W.double().tolist()
    bl = bias.tolist() if bias is not None else None
    out = torch.zeros(B, H, Wd, Cout, Dout, dtype=torch.float64)
    for b in range(B):
        for y in range(H):
            for x in range(Wd):
                votes = []
                for ky in range(kernel):
                    for kx in range(kernel):
                        yy, xx = y + ky - pad, x + kx - pad
                        for i in range(Cin):
                            inside = 0 <= yy < H and 0 <= xx < Wd
                            child = ul[b][yy][xx][i] if inside else [0.0] * Din
                            votes.append([matvec(Wl[(ky * kernel + kx) * Cin + i][j], child) for j in range(Cout)])
                v = ref_route(votes, iters, bl, fn)
                if residual:
                    v = [[v[j][d] + ul[b][y][x][j][d] for d in range(Dout)] for j in range(Cout)]
                out[b, y, x] = torch.tensor(v, dtype=torch.float64)
    return out


def ref_classcaps(u, W, iters, bias=None, fn="sabour"):
    B, H, Wd, C, D = u.shape
    ul, Wl = u.double().tolist(), W.double().tolist()
    bl = bias.tolist() if bias is not None else None
    out = []
    for b in range(B):
        votes = [[matvec(Wl[(y * Wd + x) * C + i][j], ul[b][y][x][i]) for j in range(W.shape[1])]
                 for y in range(H) for x in range(Wd) for i in range(C)]
        out.append(ref_route(votes, iters, bl, fn))
    return torch.tensor(out, dtype=torch.float64)
