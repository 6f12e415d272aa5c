"""EM, self- and variational-Bayes routing: capsules with a pose *and* a separate scalar activation.

Seed 002 (Everett, Zhong, Leontidis, *Vanishing Activations*) compares three routing algorithms
at depth 1-10; this module holds them, each as a ConvCaps-style layer (3×3, stride 1, pad 1,
C → C types) and a fully connected class-capsule layer. ``ModelConfig(routing=...)`` picks one:

========  ============================  ===========================  ================================
routing   capsule                       coefficients                 activation of parent j
========  ============================  ===========================  ================================
``em``    P×P pose matrix + logistic a  EM posterior R_ij (E-step)   σ(λ(β_a − Σ_h cost_h))
``self``  D-vector pose + a             softmax_j(W_route u_i + b)   Σ_i a_i c_ij / Σ_i a_i
``vb``    P×P pose matrix + logistic a  VB responsibilities γ_ij     σ(BN(β_a − (β_u + π̃_j H_j)))
========  ============================  ===========================  ================================

All three work on the same layout as :func:`capslib.engine.routing.dynamic_routing`: the votes of K
children for J parents are ``(n, J, K, D)`` (n = images, or images × output locations), the
children's activations ``(n, K)``. Every routing returns a :class:`RoutingOutput` whose
coefficients ``coeff`` are ``(n, J, K)`` and sum to 1 over the **parents** J (trap 1 of DESIGN.md).
Children outside the image (zero padding) have activation 0 and so carry no weight.

Sources (facts carried over, code written here):

* **EM** - Hinton, Sabour, Frosst, *Matrix capsules with EM routing*, ICLR 2018, Procedure 1.
  Votes V_ij = M_i W_ij (4×4 by default). M-step: R_ij ← R_ij a_i; μ_j, σ_j² the R-weighted mean
  and variance of the votes; cost_h = (β_u + ln σ_j^h) Σ_i R_ij; a_j = logistic(λ(β_a − Σ_h cost_h)).
  E-step: R_ij = a_j p_j(V_ij) / Σ_k a_k p_k(V_ik), Gaussian p with diagonal σ². R starts at 1/J,
  the last E-step is skipped (it changes no output). β_u, β_a: one learned pair per output type.
  Inverse temperature: λ_t = λ_final (1 − 0.95^(t+1)), t = 0.., the formula the authors gave on
  OpenReview (quoted in Gritzman's IBM implementation and SR-CapsNet's ``modules.py``).
  *Stated deviation*: Σ_i R_ij is divided by K/J, the amount of data a parent gets when all K
  children are fully active and spread evenly (Gritzman 2019, "normalise amount of information"):
  without it the cost of a class layer (K/J = G²C/N, 14-160 here) and of a ConvCaps layer
  (K/J = 9) differ by up to 20× and no single λ suits both. With it, λ_final = 1 plays the role of
  the authors' λ_final = 0.01 times IBM's factor 100. Loss: the spread loss (EM paper eq. 3,
  margin 0.2 → 0.9 over the run; :func:`spread_loss`) - with the margin loss the class activations
  of a one-epoch CPU run stayed near 0.84 for every class and accuracy at chance.
* **Self-routing** - Hahn, Pyeon, Kim, *Self-routing capsule networks*, NeurIPS 2019, and their
  public ``modules.py`` (``SelfRouting2d``). Each child has its own routing network:
  c_ij = softmax_j(W_route_i u_i + b_i) (W_route, b zero-initialised, so routing starts uniform);
  votes û_j|i = W_pose_ij u_i; a_j = Σ_i a_i c_ij / Σ_i a_i and pose_j = Σ_i a_i c_ij û_j|i / Σ_i a_i c_ij
  over the k×k×C window. No iterations. The class layer has no pose (``pose_out=False`` in
  SR-CapsNet): its capsules are the activations alone, which sum to 1 over the classes. Loss: the
  margin loss on these activations (SR-CapsNet uses the NLL of their log, as they sum to 1).
* **VB** - Ribeiro, Leontidis, Kollias, *Capsule routing via variational Bayes*, AAAI 2020, and
  their public ``vb_routing.py``. A mixture of transforming Gaussians with a Dirichlet prior on the
  mixing weights (α0) and a Normal-Wishart prior (m0 = 0, κ0, diagonal Ψ0 = ψ0·I, ν0 = D + 1) on
  each parent's mean and *diagonal* precision. γ_ij starts at 1/J; each iteration weights γ by the
  child activation, updates q*(π, μ, Λ) (Bishop 10.58-10.63) and, except in the last, q*(z)
  (Bishop 10.46-10.49, normalised over the parents: the public code leaves E[ln π_j] out of the
  numerator, so its γ do not sum to 1). Activation: σ(BN(β_a − (β_u + π̃_j H[q*(μ_j, Λ_j)]))) with
  π̃_j = exp E[ln π_j] and H = D/2 ln(2πe) − ½ E[ln|Λ_j|], as in the public code; this is eq. (11)
  of seed 002, which prints the two expectations as plain summands (read literally, a higher
  expected precision - closer agreement - would *lower* the activation). The pose is the
  posterior mean m_j. Loss: the spread loss (the public code uses cross-entropy on the σ
  outputs; the BatchNorm before σ keeps every class's activations spread around 0.5, so the
  margin loss's targets 0.9 / 0.1 cannot all be met).

``TrainConfig.loss = "auto"`` picks these losses (spread for em and vb, margin otherwise).

Shared architecture choices (stated; see :class:`PrimaryActivationHead`): PrimaryCaps' C·D conv
channels give the poses (batch-normalised, not squashed), a parallel conv with C channels gives
the activations a = σ(BN(conv)), as in SR-CapsNet's and the VB code's primary layers. Every
ConvCaps layer batch-normalises its output poses (SR-CapsNet ``bn_pose_conv_caps``; VB ``BN_v``).
Transformation matrices are N(0, init_std²) like the dynamic layers (trap 6: one recorded knob).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .capsules import capsule_votes, unfold_capsules

__all__ = [
    "ALT_ROUTINGS",
    "RoutingOutput",
    "VBPriors",
    "em_lambda",
    "em_routing",
    "self_routing",
    "vb_routing",
    "spread_loss",
    "spread_margin",
    "spread_total_loss",
    "matrix_votes",
    "unfold_activations",
    "PrimaryActivationHead",
    "EMConvCaps",
    "EMClassCaps",
    "SelfRoutingConvCaps",
    "SelfRoutingClassCaps",
    "VBConvCaps",
    "VBClassCaps",
    "build_alt_layers",
]

#: Routings with a separate scalar activation (the model's ``activations`` are filled for these).
ALT_ROUTINGS = ("em", "self", "vb")

EPS = 1e-6  # variance floor and 0/0 guard
LN_2PI = math.log(2 * math.pi)


@dataclass
class RoutingOutput:
    """One routing problem's result.

    ``a``: (n, J) parent activations (for VB: the logits before BatchNorm and σ);
    ``pose``: (n, J, D) parent poses, or None (self-routing class layer);
    ``coeff``: (n, J, K) final coefficients, summing to 1 over J (EM's R, VB's γ, SR's c).
    """

    a: Tensor
    pose: Optional[Tensor]
    coeff: Tensor


# ------------------------------------------------------------------------------------- votes

def matrix_votes(u: Tensor, weight: Tensor) -> Tensor:
    """Matrix-capsule votes V_ij = M_i W_ij.

    Args:
        u: child poses, (n, K, P·P), row-major P×P matrices.
        weight: one P×P matrix per (child, parent), (K, J, P, P).

    Returns:
        (n, J, K, P·P), the layout of the routings below.
    """
    n, K, PP = u.shape
    _, J, P, _ = weight.shape
    M = u.view(n, K, P, P)
    V = torch.einsum("nkab,kjbc->njkac", M, weight)  # (n, J, K, P, P)
    return V.reshape(n, J, K, PP)


def unfold_activations(a: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """(B, H, W, C) activations -> (B·L, k·k·C), children ordered like :func:`unfold_capsules`."""
    cols, _, _ = unfold_capsules(a.unsqueeze(-1), kernel, stride, padding)  # (B·L, k·k·C, 1)
    return cols.squeeze(-1)


# ---------------------------------------------------------------------------------- routings

def em_lambda(t: int, final_lambda: float) -> float:
    """Inverse temperature of EM iteration t (0-based): λ_final·(1 − 0.95^(t+1)) (Hinton, OpenReview)."""
    return final_lambda * (1.0 - 0.95 ** (t + 1))


def _center(votes: Tensor) -> tuple[Tensor, Tensor]:
    """([(V − c)², V − c] concatenated on the last axis (n, J, K, 2D), c (n, J, D)).

    c is the plain mean of the votes over the children. The routings below need R-weighted means
    and variances of the votes, and the squared distance of every vote to its parent's mean.
    Written as moments of the centred votes, each is one batched matrix product over the
    children: an iteration reads the votes but builds no other vote-sized temporary (the cost of
    these routings, as of dynamic routing, is memory traffic). Centring keeps E[x²] − E[x]² well
    conditioned: the spread is measured around the votes' own mean, not around 0.
    """
    c = votes.mean(dim=2, keepdim=True)
    vc = votes - c
    return torch.cat([vc * vc, vc], dim=-1), c.squeeze(2)


def _wmoments(w: Tensor, vcat: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_k w_jk x_jk, Σ_k w_jk x_jk²) of the centred votes for w (n, J, K): each (n, J, D)."""
    m = torch.matmul(w.unsqueeze(2), vcat).squeeze(2)  # (n, J, 2D)
    D = m.shape[-1] // 2
    return m[..., D:], m[..., :D]


def _sq_dist(vcat: Tensor, mc: Tensor, prec: Tensor) -> Tensor:
    """Σ_h prec_jh (x_jkh − mc_jh)² for every centred vote x: (n, J, K), clamped at 0."""
    coef = torch.cat([prec, -2 * mc * prec], dim=-1).unsqueeze(-1)  # (n, J, 2D, 1)
    q = torch.matmul(vcat, coef).squeeze(-1)  # (n, J, K)
    return (q + (mc * mc * prec).sum(-1, keepdim=True)).clamp_min(0)


def em_routing(votes: Tensor, a_in: Tensor, beta_u: Tensor, beta_a: Tensor, iters: int = 3,
               final_lambda: float = 1.0, eps: float = EPS) -> RoutingOutput:
    """EM routing (Hinton et al. 2018, Procedure 1) of K children to J parents.

    Args:
        votes: (n, J, K, D) votes V_ij.
        a_in: (n, K) child activations in [0, 1].
        beta_u, beta_a: (J,) learned per parent type.
        iters: EM iterations (M-step, then E-step except after the last M-step).
        final_lambda: λ_final of the schedule :func:`em_lambda`.

    Returns:
        a (n, J) in (0, 1), pose μ (n, J, D), coeff R (n, J, K) of the last M-step.
    """
    if iters < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iters}")
    n, J, K, D = votes.shape
    vcat, center = _center(votes)
    R = votes.new_full((n, J, K), 1.0 / J)  # uniform assignment
    a_child = a_in.unsqueeze(1)  # (n, 1, K)
    data_per_parent = K / J  # Σ_i R_ij a_i when every child is fully active and spread evenly
    for t in range(iters):
        lam = em_lambda(t, final_lambda)
        # ---- M-step
        Ra = R * a_child  # (n, J, K): R_ij ← R_ij a_i
        r_sum = Ra.sum(dim=-1)  # (n, J)
        w = Ra / (r_sum.unsqueeze(-1) + eps)  # sums to 1 over K (0 where no child is active)
        mu_c, ex2 = _wmoments(w, vcat)  # (n, J, D), centred mean and second moment
        var = (ex2 - mu_c * mu_c).clamp_min(0) + eps  # σ_j^h², (n, J, D)
        cost = ((beta_u.view(1, J, 1) + 0.5 * torch.log(var)) * (r_sum / data_per_parent).unsqueeze(-1)).sum(-1)
        a_out = torch.sigmoid(lam * (beta_a.view(1, J) - cost))  # (n, J)
        if t == iters - 1:
            break
        # ---- E-step: R_ij ∝ a_j N(V_ij; μ_j, σ_j²), normalised over the parents j
        log_p = -0.5 * (LN_2PI + torch.log(var)).sum(-1, keepdim=True) - 0.5 * _sq_dist(vcat, mu_c, 1.0 / var)
        R = torch.softmax(torch.log(a_out + eps).unsqueeze(-1) + log_p, dim=1)  # (n, J, K)
    return RoutingOutput(a=a_out, pose=mu_c + center, coeff=R)


def self_routing(votes: Optional[Tensor], route_logits: Tensor, a_in: Tensor, eps: float = EPS) -> RoutingOutput:
    """Self-routing (Hahn et al. 2019): coefficients from each child's own routing network.

    Args:
        votes: (n, J, K, D) pose votes W_pose u_i, or None for a layer without pose output.
        route_logits: (n, J, K) W_route u_i + b_i.
        a_in: (n, K) child activations.

    Returns:
        a (n, J) = Σ_i a_i c_ij / Σ_i a_i (sums to 1 over J where any child is active),
        pose (n, J, D) = Σ_i a_i c_ij û_j|i / Σ_i a_i c_ij, coeff c (n, J, K) = softmax over J.
    """
    c = torch.softmax(route_logits, dim=1)  # (n, J, K), over the parents
    ac = c * a_in.unsqueeze(1)  # (n, J, K)
    ac_sum = ac.sum(dim=-1)  # (n, J)
    a_out = ac_sum / (a_in.sum(dim=-1, keepdim=True) + eps)
    pose = None
    if votes is not None:
        w = ac / (ac_sum.unsqueeze(-1) + eps)  # (n, J, K)
        pose = torch.matmul(w.unsqueeze(2), votes).squeeze(2)  # (n, J, D)
    return RoutingOutput(a=a_out, pose=pose, coeff=c)


@dataclass(frozen=True)
class VBPriors:
    """Priors of VB routing (Ribeiro et al. 2020; defaults of their public code).

    Dirichlet(α0) over the mixing weights; Normal-Wishart over each parent's mean and diagonal
    precision: m0 = 0, κ0, scale matrix Ψ0 = ψ0·I, ν0 degrees of freedom (None -> D + 1).
    """

    alpha0: float = 1.0
    kappa0: float = 1.0
    psi0: float = 1.0
    nu0: Optional[float] = None


def _vb_expectations(alpha: Tensor, nu: Tensor, inv_psi: Tensor, D: int) -> tuple[Tensor, Tensor]:
    """E[ln π_j] (Dirichlet) and E[ln|Λ_j|] (Wishart, diagonal scale 1/inv_psi)."""
    e_ln_pi = torch.digamma(alpha) - torch.digamma(alpha.sum(dim=1, keepdim=True))  # (n, J)
    d = torch.arange(D, dtype=nu.dtype, device=nu.device)  # 0..D-1
    e_ln_det = torch.digamma(0.5 * (nu.unsqueeze(-1) - d)).sum(-1) + D * math.log(2.0) \
        - torch.log(inv_psi).sum(-1)  # (n, J)
    return e_ln_pi, e_ln_det


def vb_routing(votes: Tensor, a_in: Tensor, beta_u: Tensor, beta_a: Tensor, iters: int = 3,
               priors: VBPriors = VBPriors(), eps: float = EPS) -> RoutingOutput:
    """Variational-Bayes routing (Ribeiro et al. 2020, Algorithm 1) with diagonal precisions.

    Args:
        votes: (n, J, K, D) votes V_j|i.
        a_in: (n, K) child activations.
        beta_u, beta_a: (J,) learned per parent type.

    Returns:
        a: (n, J) activation *logits* β_a − (β_u + π̃_j H_j); the layer applies BatchNorm and σ.
        pose: (n, J, D) posterior means m_j.
        coeff: (n, J, K) responsibilities γ used in the last update, summing to 1 over J.
    """
    if iters < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iters}")
    n, J, K, D = votes.shape
    nu0 = float(D + 1) if priors.nu0 is None else float(priors.nu0)
    kappa0, inv_psi0 = priors.kappa0, 1.0 / priors.psi0
    vcat, c = _center(votes)  # c: (n, J, D)
    gamma = votes.new_full((n, J, K), 1.0 / J)
    a_child = a_in.unsqueeze(1)
    for t in range(iters):
        # ---- update q*(π, μ, Λ) from the activation-weighted statistics of the votes
        Ra = gamma * a_child  # (n, J, K): γ_ij ← γ_ij a_i
        N = Ra.sum(dim=-1)  # (n, J)
        s1, s2 = _wmoments(Ra, vcat)  # Σ Ra (V − c), Σ Ra (V − c)²
        xbar_c = s1 / (N.unsqueeze(-1) + eps)  # x̄_j − c, (n, J, D)
        NS = (s2 - s1 * xbar_c).clamp_min(0)  # N_j S_j = Σ_i Ra (V − x̄_j)², diagonal
        xbar = xbar_c + c
        alpha, kappa, nu = priors.alpha0 + N, kappa0 + N, nu0 + N  # (n, J)
        m = (N / kappa).unsqueeze(-1) * xbar  # (κ0 m0 + N x̄)/κ with m0 = 0
        inv_psi = inv_psi0 + NS + (kappa0 * N / kappa).unsqueeze(-1) * xbar ** 2  # Ψ_j⁻¹ (diagonal)
        e_ln_pi, e_ln_det = _vb_expectations(alpha, nu, inv_psi, D)
        if t == iters - 1:
            break
        # ---- update q*(z): ln ρ_ij = E[ln π_j] + ½E[ln|Λ_j|] − D/2 ln 2π − ½ E[(V−μ)ᵀΛ(V−μ)]
        maha = D / kappa.unsqueeze(-1) + nu.unsqueeze(-1) * _sq_dist(vcat, m - c, 1.0 / inv_psi)  # (n, J, K)
        log_rho = (e_ln_pi + 0.5 * e_ln_det).unsqueeze(-1) - 0.5 * D * LN_2PI - 0.5 * maha
        gamma = torch.softmax(log_rho, dim=1)
    entropy = 0.5 * D * math.log(2 * math.pi * math.e) - 0.5 * e_ln_det  # H[q*(μ_j, Λ_j)], (n, J)
    logits = beta_a.view(1, J) - (beta_u.view(1, J) + torch.exp(e_ln_pi) * entropy)
    return RoutingOutput(a=logits, pose=m, coeff=gamma)


# -------------------------------------------------------------------------------- spread loss

def spread_margin(progress: float, start: float = 0.2, end: float = 0.9) -> float:
    """Margin of the spread loss after ``progress`` ∈ [0, 1] of training: linear from 0.2 to 0.9
    (Hinton et al. 2018, §4: "starting with a small margin of 0.2 and linearly increasing it during
    training to 0.9")."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def spread_loss(scores: Tensor, targets: Tensor, margin: float) -> Tensor:
    """Spread loss (Hinton et al. 2018, eq. 3): Σ_{i≠t} max(0, m − (a_t − a_i))², mean over the batch.

    Unlike the margin loss it asks only that the target class lead every other class by m, which
    suits class activations that cannot reach 0.9 / 0.1 (EM's inverse temperature, VB's BatchNorm).
    """
    a_t = scores.gather(1, targets.unsqueeze(1))  # (B, 1)
    gap = torch.clamp(margin - (a_t - scores), min=0) ** 2  # (B, N); the target column is m²
    gap = gap.scatter(1, targets.unsqueeze(1), 0.0)
    return gap.sum(dim=1).mean()


def spread_total_loss(scores: Tensor, targets: Tensor, margin: float, feature_maps=(), alpha: float = 0.0,
                      ccm_detached: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`capslib.engine.losses.total_loss` with the spread loss in place of the margin loss:
    (spread − α·ΣCCM, spread, ΣCCM)."""
    from .losses import ccm_loss

    spread = spread_loss(scores, targets, margin)
    if alpha == 0:
        return spread, spread, spread.new_zeros(())
    ccm = sum(ccm_loss(f, detached=ccm_detached) for f in feature_maps)
    return spread - alpha * ccm, spread, ccm


# ------------------------------------------------------------------------------------ layers

class PrimaryActivationHead(nn.Module):
    """The activations (and pose normalisation) that PrimaryCaps needs for EM, self- and VB routing.

    PrimaryCaps stays the shared conv with C·D channels; its output, batch-normalised per channel
    (``pose_bn``), gives each of the C types a D-dim pose (a P×P matrix for EM and VB). A parallel
    conv of the same kernel/stride/padding with C channels gives the activations
    a = σ(BN(conv(x))), as SR-CapsNet's ``conv_a``/``bn_a`` and the VB code's primary layer.
    """

    def __init__(self, in_channels: int, C: int, D: int, kernel: int = 3, stride: int = 2, padding: int = 0):
        super().__init__()
        self.C, self.D = C, D
        self.act_conv = nn.Conv2d(in_channels, C, kernel, stride=stride, padding=padding)
        self.act_bn = nn.BatchNorm2d(C)
        self.pose_bn = nn.BatchNorm2d(C * D)

    def forward(self, x: Tensor, pre: Tensor) -> tuple[Tensor, Tensor]:
        """x: backbone output; pre: PrimaryCaps conv output (B, C·D, G, G).

        Returns activations (B, G, G, C) in (0, 1) and poses (B, G, G, C, D).
        """
        a = torch.sigmoid(self.act_bn(self.act_conv(x))).permute(0, 2, 3, 1)  # (B, G, G, C)
        p = self.pose_bn(pre)
        B, _, H, W = p.shape
        pose = p.view(B, self.C, self.D, H, W).permute(0, 3, 4, 1, 2)  # (B, G, G, C, D)
        return a.float(), pose.float()


class _RoutedCaps(nn.Module):
    """Plumbing shared by the six layers: gather children, route (checkpointed), reshape.

    A conv layer (``kernel`` given) routes, at every output location, the k×k×Cin window of
    children to the Cout types there; a class layer (``kernel`` None) routes all K = H·W·Cin
    capsules to the classes. Subclasses define :meth:`_route_children` (votes + routing, no
    BatchNorm: the part that is recomputed in backward) and :meth:`_finish`.
    """

    def __init__(self, Cout: int, kernel: Optional[int], stride: int, padding: int, recompute: bool):
        super().__init__()
        self.Cout, self.kernel, self.stride, self.padding, self.recompute = Cout, kernel, stride, padding, recompute

    def _route_children(self, a: Tensor, u: Tensor) -> RoutingOutput:  # (n, K), (n, K, Din)
        raise NotImplementedError

    def _finish(self, a: Tensor, pose: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        return a, pose

    def route(self, a: Tensor, pose: Tensor) -> tuple[RoutingOutput, tuple[int, ...]]:
        """Raw routing of (B, H, W, Cin) activations and (B, H, W, Cin, Din) poses.

        Returns the :class:`RoutingOutput` over n = B·Ho·Wo (conv) or n = B (class) problems and
        the output grid (B, Ho, Wo) or (B,).
        """
        B = pose.shape[0]
        if self.kernel is None:
            u = pose.reshape(B, -1, pose.shape[-1])  # (B, K, Din), K = H·W·Cin
            return self._route_children(a.reshape(B, -1), u), (B,)
        u, Ho, Wo = unfold_capsules(pose, self.kernel, self.stride, self.padding)  # (B·L, 9Cin, Din)
        ak = unfold_activations(a, self.kernel, self.stride, self.padding)  # (B·L, 9Cin)
        return self._route_children(ak, u), (B, Ho, Wo)

    def _core(self, a: Tensor, pose: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        out, grid = self.route(a, pose)
        J = self.Cout
        a_out = out.a.reshape(*grid, J)
        if out.pose is None:
            return a_out, None
        return a_out, out.pose.reshape(*grid, J, out.pose.shape[-1])

    def forward(self, a: Tensor, pose: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Conv: (B, H, W, Cin), (B, H, W, Cin, Din) -> (B, Ho, Wo, Cout), (B, Ho, Wo, Cout, Dout).
        Class: -> (B, N), (B, N, D) or None."""
        with torch.autocast(device_type=pose.device.type, enabled=False):
            a, pose = a.float(), pose.float()
            if self.recompute and torch.is_grad_enabled() and (a.requires_grad or pose.requires_grad):
                a_out, p_out = checkpoint(self._core, a, pose, use_reentrant=False)
            else:
                a_out, p_out = self._core(a, pose)
            return self._finish(a_out, p_out)


def _normal(shape: tuple[int, ...], std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


def _pose_side(D: int) -> int:
    P = math.isqrt(D)
    if P * P != D or P < 2:
        raise ValueError(f"matrix capsules need D = P·P with P >= 2 (e.g. 16 for 4×4 poses), got D={D}")
    return P


class _PoseBN(nn.Module):
    """BatchNorm over the Cout·Dout pose channels of a conv capsule layer's output."""

    def __init__(self, C: int, D: int, affine: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm1d(C * D, affine=affine)

    def forward(self, pose: Tensor) -> Tensor:  # (B, H, W, C, D)
        shape = pose.shape
        return self.bn(pose.reshape(-1, shape[-2] * shape[-1])).view(shape)


class _EMCaps(_RoutedCaps):
    def __init__(self, K: int, Cout: int, D: int, kernel: Optional[int], iters: int, init_std: float,
                 final_lambda: float, recompute: bool, pose_bn: bool):
        super().__init__(Cout, kernel, 1, 1, recompute)
        P = _pose_side(D)
        self.iters, self.final_lambda = iters, final_lambda
        self.weight = _normal((K, Cout, P, P), init_std)  # W_ij: (children, parents, P, P)
        self.beta_u = nn.Parameter(torch.zeros(Cout))
        self.beta_a = nn.Parameter(torch.zeros(Cout))
        self.pose_bn = _PoseBN(Cout, D) if pose_bn else None

    def _route_children(self, a: Tensor, u: Tensor) -> RoutingOutput:
        votes = matrix_votes(u, self.weight.float())  # (n, J, K, P·P)
        return em_routing(votes, a, self.beta_u.float(), self.beta_a.float(), self.iters, self.final_lambda)

    def _finish(self, a, pose):
        return a, (self.pose_bn(pose) if self.pose_bn is not None else pose)


class EMConvCaps(_EMCaps):
    """EM-routed ConvCaps: ``weight`` (9·Cin, Cout, P, P), ``beta_u``/``beta_a`` (Cout,); poses batch-normalised."""

    def __init__(self, Cin: int, Cout: int, D: int = 16, iters: int = 3, init_std: float = 0.3,
                 final_lambda: float = 1.0, recompute: bool = True):
        super().__init__(9 * Cin, Cout, D, 3, iters, init_std, final_lambda, recompute, pose_bn=True)


class EMClassCaps(_EMCaps):
    """EM-routed class capsules: every one of the K = G·G·C input capsules votes for every class.

    One P×P matrix per (input capsule, class), as in SR-CapsNet's EM baseline (the EM paper shares
    them across positions and adds coordinates instead).
    """

    def __init__(self, num_inputs: int, num_classes: int, D: int = 16, iters: int = 3, init_std: float = 0.3,
                 final_lambda: float = 1.0, recompute: bool = True):
        super().__init__(num_inputs, num_classes, D, None, iters, init_std, final_lambda, recompute, pose_bn=False)


class _SelfCaps(_RoutedCaps):
    def __init__(self, K: int, Cout: int, Din: int, Dout: Optional[int], kernel: Optional[int], init_std: float,
                 recompute: bool):
        super().__init__(Cout, kernel, 1, 1, recompute)
        # W_pose (children, parents, Dout, Din): the votes; absent in the class layer (pose_out=False)
        self.weight = _normal((K, Cout, Dout, Din), init_std) if Dout else None
        # the routing network of each child: logits W_route u_i + b_i over the parents, zero-initialised
        self.route_weight = nn.Parameter(torch.zeros(K, Cout, Din))
        self.route_bias = nn.Parameter(torch.zeros(K, Cout))
        self.pose_bn = _PoseBN(Cout, Dout) if (Dout and kernel is not None) else None

    def _route_children(self, a: Tensor, u: Tensor) -> RoutingOutput:
        logits = torch.einsum("nkd,kjd->njk", u, self.route_weight.float()) + self.route_bias.float().t()  # (n, J, K)
        votes = capsule_votes(u, self.weight.float()) if self.weight is not None else None  # (n, J, K, Dout)
        return self_routing(votes, logits, a)

    def _finish(self, a, pose):
        return a, (self.pose_bn(pose) if (self.pose_bn is not None and pose is not None) else pose)


class SelfRoutingConvCaps(_SelfCaps):
    """Self-routing ConvCaps (SR-CapsNet ``SelfRouting2d``, pose_out=True): ``weight`` = W_pose
    (9·Cin, Cout, Dout, Din), ``route_weight`` = W_route (9·Cin, Cout, Din), ``route_bias`` (9·Cin, Cout)."""

    def __init__(self, Cin: int, Din: int, Cout: int, Dout: int, init_std: float = 0.3, recompute: bool = True):
        super().__init__(9 * Cin, Cout, Din, Dout, 3, init_std, recompute)


class SelfRoutingClassCaps(_SelfCaps):
    """Self-routing class layer (SR-CapsNet ``fc_caps``, pose_out=False): activations only."""

    def __init__(self, num_inputs: int, Din: int, num_classes: int, recompute: bool = True):
        super().__init__(num_inputs, num_classes, Din, None, None, 0.0, recompute)


class _VBCaps(_RoutedCaps):
    def __init__(self, K: int, Cout: int, D: int, kernel: Optional[int], iters: int, init_std: float,
                 priors: VBPriors, recompute: bool):
        super().__init__(Cout, kernel, 1, 1, recompute)
        P = _pose_side(D)
        self.iters, self.priors = iters, priors
        self.weight = _normal((K, Cout, P, P), init_std)
        self.beta_u = nn.Parameter(torch.zeros(Cout))
        self.beta_a = nn.Parameter(torch.zeros(Cout))
        self.act_bn = nn.BatchNorm1d(Cout, affine=False)  # BN_a of the VB code, before σ
        self.pose_bn = _PoseBN(Cout, D, affine=False) if kernel is not None else None  # BN_v

    def _route_children(self, a: Tensor, u: Tensor) -> RoutingOutput:
        votes = matrix_votes(u, self.weight.float())
        return vb_routing(votes, a, self.beta_u.float(), self.beta_a.float(), self.iters, self.priors)

    def _finish(self, logits, pose):
        shape = logits.shape
        a = torch.sigmoid(self.act_bn(logits.reshape(-1, shape[-1])).view(shape))
        return a, (self.pose_bn(pose) if self.pose_bn is not None else pose)


class VBConvCaps(_VBCaps):
    """VB-routed ConvCaps: ``weight`` (9·Cin, Cout, P, P), ``beta_u``/``beta_a`` (Cout,)."""

    def __init__(self, Cin: int, Cout: int, D: int = 16, iters: int = 3, init_std: float = 0.3,
                 priors: VBPriors = VBPriors(), recompute: bool = True):
        super().__init__(9 * Cin, Cout, D, 3, iters, init_std, priors, recompute)


class VBClassCaps(_VBCaps):
    """VB-routed class capsules, one P×P matrix per (input capsule, class)."""

    def __init__(self, num_inputs: int, num_classes: int, D: int = 16, iters: int = 3, init_std: float = 0.3,
                 priors: VBPriors = VBPriors(), recompute: bool = True):
        super().__init__(num_inputs, num_classes, D, None, iters, init_std, priors, recompute)


def build_alt_layers(cfg) -> tuple[PrimaryActivationHead, nn.ModuleList, nn.Module]:
    """(primary activation head, I ConvCaps layers, class layer) for ``cfg.routing`` in em/self/vb."""
    C, D, I, N, K = cfg.C, cfg.D, cfg.I, cfg.num_classes, cfg.grid * cfg.grid * cfg.C
    it, std, rc = cfg.routing_iters, cfg.init_std, cfg.recompute_votes
    head = PrimaryActivationHead(cfg.widths[2], C, D, cfg.primary_kernel, cfg.primary_stride, cfg.primary_padding)
    if cfg.routing == "em":
        lam = cfg.em_final_lambda
        inter = [EMConvCaps(C, C, D, it, std, lam, rc) for _ in range(I)]
        cls: nn.Module = EMClassCaps(K, N, D, it, std, lam, rc)
    elif cfg.routing == "self":
        inter = [SelfRoutingConvCaps(C, D, C, D, std, rc) for _ in range(I)]
        cls = SelfRoutingClassCaps(K, D, N, rc)
    elif cfg.routing == "vb":
        pri = VBPriors(cfg.vb_alpha0, cfg.vb_kappa0, cfg.vb_psi0, cfg.vb_nu0 or None)
        inter = [VBConvCaps(C, C, D, it, std, pri, rc) for _ in range(I)]
        cls = VBClassCaps(K, N, D, it, std, pri, rc)
    else:
        raise ValueError(f"routing must be one of {ALT_ROUTINGS} here, got {cfg.routing!r}")
    return head, nn.ModuleList(inter), cls
