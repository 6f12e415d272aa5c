"""Fused dynamic routing on CPU: votes, routing and their gradients without a vote tensor in memory.

:func:`route` computes the same function as ``dynamic_routing(capsule_votes(u, W), iters)``:
the votes ``u_hat[n, j, k] = W[k, j] u[n, k]`` of K children for J parents, routed by agreement
for ``iters`` iterations. The PyTorch path materialises u_hat (B·L·J·K·D floats, 4 MB per image
per ConvCaps layer of CapsNet[20, 8, I]) and streams it from main memory about 20 times per
training step; the kernel in ``csrc/fused_routing.cpp`` computes the votes of a few problems into
a buffer that stays in cache, routes them there and, in the backward pass, recomputes them and
contracts the gradient at once into grad u and grad W. Nothing of vote size reaches main memory,
and nothing of vote size is kept for backward (the forward pass saves only u and W).

The kernel is plain C++ with a C ABI, compiled once per machine with the system's C++ compiler
(``g++ -O3 -march=native``; about a minute) into ``$CAPSLIB_KERNELS`` (default
``~/.cache/capslib/kernels``), keyed by a hash of the source, the compiler, its flags and the CPU's flags,
and called through ctypes, which releases the GIL: the problems are split into
``torch.get_num_threads()`` ranges, one Python thread each. ``scripts/setup.sh`` builds it at
install time (``capslib.engine.fused_routing.main()``); otherwise the first use does.

Where it cannot run (no compiler, a failed build, a CUDA tensor, ``CAPSLIB_FUSED_ROUTING=0``),
:func:`available` is False, the capsule layers use the PyTorch path, and the reason is warned
once (:func:`status`). The kernel implements Sabour et al.'s routing with the remedies of
:func:`capslib.engine.routing.dynamic_routing`: a parent bias before every squash
(``ModelConfig.squash_bias``) and the squashes of :data:`SQUASHES` (``squash_fn``); ``residual`` is added
outside the routing. A layer with anything else the kernel lacks takes the PyTorch path, warned once per
remedy (:func:`usable`). The gradient is the one of :class:`capslib.engine.routing._RoutingFunction`,
checked by ``gradcheck`` in float64 and against the PyTorch path (tests/test_fused_routing.py,
tests/test_remedies.py).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cache_dirs import user_cache_dir

__all__ = ["available", "status", "route", "build", "build_target", "kernel_path", "march"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_routing.cpp"
_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-Wno-psabi"]
#: The kernel's ``-march`` comes from this variable (default ``native``). The vector width, and so the
#: order in which sums are rounded, follows the target: ``CAPSLIB_KERNEL_MARCH=x86-64-v3`` builds the
#: AVX2 kernel on an AVX-512 machine, e.g. to compare a run's numerics across instruction sets.
MARCH_ENV = "CAPSLIB_KERNEL_MARCH"
_MARCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
#: Largest vote (output capsule) dimension the kernel takes; larger ones use the PyTorch path.
MAX_DIMS = 32
#: The squashes the kernel implements (``squash_fn`` name -> the kernel's ``squash`` argument).
SQUASHES = {"sabour": 0, "efficient": 1}
_ABIS = (2, 3)  # 2: Sabour's squash, no bias (kernels built from older sources, see benchmarks/); 3: the remedies
_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_abi = 0  # the loaded kernel's ABI version
_reason: Optional[str] = None  # why the kernel is unavailable, once known
_warned: set[str] = set()  # what :func:`_warn_once` has warned about: "unavailable", or a remedy
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_pid = 0


def _cache_dir() -> Path:
    return user_cache_dir("kernels", "CAPSLIB_KERNELS")


def _compiler() -> Optional[str]:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def march() -> str:
    """The ``-march`` target the kernel is built for: ``$CAPSLIB_KERNEL_MARCH``, default ``native``."""
    value = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not _MARCH_RE.match(value):
        raise ValueError(f"{MARCH_ENV}={value!r} is not a compiler target name (e.g. native, x86-64-v3)")
    return value


def _flags() -> list[str]:
    return [*_FLAGS, f"-march={march()}"]


@lru_cache(maxsize=None)
def _resolved_native(cxx: str) -> str:
    """What ``-march=native`` means to ``cxx`` on this CPU, with its widest vector ISA (``znver3+avx512``)."""
    try:
        out = subprocess.run([cxx, "-march=native", "-Q", "--help=target"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(r"^\s*-march=\s*(\S+)", out, re.M)
    widest = next((isa for flag, isa in (("avx512f", "avx512"), ("avx2", "avx2"), ("sse4.2", "sse4.2"))
                   if re.search(rf"^\s*-m{re.escape(flag)}\s+\[enabled\]", out, re.M)), "")
    return (m.group(1) if m else "?") + (f"+{widest}" if widest else "")


def build_target() -> str:
    """The kernel's build target for provenance: ``native=znver3+avx512``, ``x86-64-v3``, or ``off`` when
    the kernel is not used (disabled, or it could not be built)."""
    if not available():
        return "off"
    m = march()
    return f"native={_resolved_native(_compiler())}" if m == "native" else m


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return sys.platform


def kernel_path() -> Optional[Path]:
    """Where this machine's build of the kernel lives (None without a C++ compiler)."""
    cxx = _compiler()
    if cxx is None:
        return None
    h = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), cxx.encode(), " ".join(_flags()).encode(), _cpu_flags().encode()):
        h.update(part)
    return _cache_dir() / f"fused_routing_{h.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> Path:
    """Compile the kernel for this machine if it is not built yet; return the shared library's path.

    The build writes a temporary file and renames it into place, so concurrent builds (two test
    workers, two sweeps) never load a half-written library. Raises RuntimeError naming the
    compiler's error.
    """
    target = kernel_path()
    if target is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [_compiler(), *_flags(), str(_SOURCE), "-o", tmp]
    if verbose:
        print("capslib: building the fused routing kernel:", " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building {_SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


def _load() -> Optional[ctypes.CDLL]:
    global _lib, _reason, _abi
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        if os.environ.get("CAPSLIB_FUSED_ROUTING", "1") == "0":
            _reason = "disabled by CAPSLIB_FUSED_ROUTING=0"
            return None
        try:
            lib = ctypes.CDLL(str(build()))
            abi = lib.capslib_routing_abi_version()
            if abi not in _ABIS:
                raise RuntimeError(f"kernel ABI version mismatch ({abi}, not one of {_ABIS})")
        except (RuntimeError, OSError, ValueError) as exc:
            _reason = f"the fused routing kernel could not be built or loaded: {exc}"
            return None
        i64, i32, dbl, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
        for name in ("capslib_route_forward_f32", "capslib_route_forward_f64"):
            getattr(lib, name).argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i32, i32, i32, dbl]
        for name in ("capslib_route_backward_f32", "capslib_route_backward_f64"):
            getattr(lib, name).argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32, i32, i32, dbl]
        if abi >= 3:  # (..., bias, ...) and (..., gbias, ...) before n0; the squash kind last
            for name in ("capslib_route_forward3_f32", "capslib_route_forward3_f64"):
                getattr(lib, name).argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i32, i32, i32, dbl, i32]
            for name in ("capslib_route_backward3_f32", "capslib_route_backward3_f64"):
                getattr(lib, name).argtypes = [ptr] * 7 + [i64, i64, i64, i64, i32, i32, i32, dbl, i32]
            lib.capslib_squash_factor_f32.argtypes = [ctypes.c_float, dbl, i32, ptr]
            lib.capslib_squash_factor_f64.argtypes = [dbl, dbl, i32, ptr]
        _lib, _abi = lib, abi
        return lib


def available() -> bool:
    """True when the fused CPU kernel is built and loaded (building it on first call if needed)."""
    return _load() is not None


def status() -> str:
    """One line: which routing path CPU capsule layers use, and why."""
    if available():
        return f"fused CPU routing kernel ({kernel_path()})"
    return f"PyTorch routing path ({_reason})"


def usable(u: Tensor, weight: Tensor, remedy: Optional[str] = None) -> bool:
    """Whether :func:`route` can take children ``u`` (..., Din) and ``weight`` (K, J, Dout, Din):
    CPU, float32 or float64, votes of at most :data:`MAX_DIMS` dims, and no ``remedy``. Warns once (naming
    the reason) when the kernel is unavailable on CPU, so a slow run never goes unexplained.

    ``remedy``: None, or what the layer routes with that the kernel does not implement (e.g. a squash
    not in :data:`SQUASHES`); then False, with a warning once per remedy naming it."""
    if u.device.type != "cpu" or u.dtype not in (torch.float32, torch.float64):
        return False
    if weight.shape[-2] > MAX_DIMS:
        return False
    if remedy is not None:
        _warn_once(remedy, f"capslib: the fused CPU routing kernel does not implement {remedy}; "
                           f"capsule layers with {remedy} run the slower PyTorch path")
        return False
    if available():
        return True
    _warn_once("unavailable", f"capslib: {status()}; capsule layers run the slower PyTorch path")
    return False


def _warn_once(key: str, message: str) -> None:
    """``warnings.warn(message)`` the first time ``key`` comes, pointing at the capsule layer's caller."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _run_split(fn, n: int, args_of) -> None:
    """Call ``fn(*args_of(n0, n1))`` over ``torch.get_num_threads()`` ranges of [0, n) in parallel."""
    global _pool, _pool_size, _pool_pid
    threads = max(1, min(torch.get_num_threads(), n))
    if threads == 1:
        rc = fn(*args_of(0, n))
        if rc != 0:
            raise RuntimeError(f"fused routing kernel rejected its arguments (code {rc})")
        return
    if _pool is None or _pool_size < threads or _pool_pid != os.getpid():  # a forked child has no pool threads
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="capslib-routing")
        _pool_size, _pool_pid = threads, os.getpid()
    bounds = [n * i // threads for i in range(threads + 1)]
    futures = [_pool.submit(fn, *args_of(bounds[i], bounds[i + 1])) for i in range(threads)]
    codes = [f.result() for f in futures]
    if any(codes):
        raise RuntimeError(f"fused routing kernel rejected its arguments (codes {codes})")


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _padded_dims(dout: int) -> int:
    """The kernel's vote width: Dout padded to a power of two in [4, 32] (zero rows of W, exact)."""
    return max(4, 1 << (dout - 1).bit_length())


def _kernel_weight(weight: Tensor) -> Tensor:
    """(K, J, Dout, Din) -> the kernel's (K, J, Din, P): each matrix transposed, Dout padded to P."""
    K, J, Dout, Din = weight.shape
    wt = weight.new_zeros(K, J, Din, _padded_dims(Dout))
    wt[..., :Dout] = weight.transpose(-1, -2)
    return wt


def _kernel_bias(bias: Optional[Tensor], P: int) -> Optional[Tensor]:
    """(J, Dout) -> the kernel's (J, P), zero in the padded dims (so they stay exactly zero); None stays None."""
    if bias is None:
        return None
    J, Dout = bias.shape
    b = bias.new_zeros(J, P)
    b[:, :Dout] = bias
    return b


def _call(direction: str, dtype: torch.dtype, abi: int = 2):
    """The kernel's entry point: ABI 2 (Sabour's squash, no bias) or ABI 3 (a bias and the squash kind)."""
    suffix = "f64" if dtype == torch.float64 else "f32"
    return getattr(_lib, f"capslib_route_{direction}{'3' if abi == 3 else ''}_{suffix}")


def _forward(u: Tensor, weight: Tensor, iters: int, eps: float, bias: Optional[Tensor] = None,
             squash: int = 0) -> Tensor:
    n, K, Din = u.shape
    _, J, Dout, _ = weight.shape
    wt = _kernel_weight(weight)  # (K, J, Din, P)
    P = wt.shape[-1]
    v = u.new_empty(n, J, P)
    if bias is None and squash == 0:  # the default: the ABI 2 entry point, as before the remedies
        fn = _call("forward", u.dtype)
        _run_split(fn, n, lambda n0, n1: (_ptr(u), _ptr(wt), _ptr(v), n0, n1, K, J, Din, P, iters, eps))
    else:
        kb = _kernel_bias(bias, P)
        b_ptr = None if kb is None else _ptr(kb)
        fn = _call("forward", u.dtype, 3)
        _run_split(fn, n, lambda n0, n1: (_ptr(u), _ptr(wt), b_ptr, _ptr(v), n0, n1, K, J, Din, P, iters, eps,
                                          squash))
    return v[..., :Dout] if P != Dout else v


def _backward(u: Tensor, weight: Tensor, g_v: Tensor, iters: int, eps: float, bias: Optional[Tensor] = None,
              squash: int = 0, bias_grad: bool = False) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """grad u, grad weight and (``bias_grad``) grad bias, summed over problems and routing iterations."""
    n, K, Din = u.shape
    _, J, Dout, _ = weight.shape
    wt = _kernel_weight(weight)
    P = wt.shape[-1]
    if P != Dout:
        g_v = torch.cat([g_v, g_v.new_zeros(n, J, P - Dout)], dim=-1)
    g_v = g_v.contiguous()
    g_u = torch.empty_like(u)
    threads = max(1, min(torch.get_num_threads(), n))
    g_wt = wt.new_zeros(threads, *wt.shape)  # one (K, J, Din, P) accumulator per thread, summed below
    bounds = [n * i // threads for i in range(threads + 1)]
    if bias is None and squash == 0:  # the default: the ABI 2 entry point, as before the remedies
        fn, g_b = _call("backward", u.dtype), None

        def args_of(n0: int, n1: int):
            slot = bounds.index(n0)
            return (_ptr(u), _ptr(wt), _ptr(g_v), _ptr(g_u), _ptr(g_wt[slot]), n0, n1, K, J, Din, P, iters, eps)
    else:
        kb = _kernel_bias(bias, P)
        b_ptr = None if kb is None else _ptr(kb)
        g_b = wt.new_zeros(threads, J, P) if bias is not None and bias_grad else None  # per thread, as g_wt
        fn = _call("backward", u.dtype, 3)

        def args_of(n0: int, n1: int):
            slot = bounds.index(n0)
            return (_ptr(u), _ptr(wt), b_ptr, _ptr(g_v), _ptr(g_u), _ptr(g_wt[slot]),
                    None if g_b is None else _ptr(g_b[slot]), n0, n1, K, J, Din, P, iters, eps, squash)

    _run_split(fn, n, args_of)
    g_wt = g_wt.sum(dim=0) if threads > 1 else g_wt[0]
    if g_b is not None:
        g_b = (g_b.sum(dim=0) if threads > 1 else g_b[0])[:, :Dout].contiguous()
    return g_u, g_wt[..., :Dout].transpose(-1, -2).contiguous(), g_b


class _FusedRouting(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor, iters: int, eps: float, bias: Optional[Tensor] = None,
                squash: int = 0) -> Tensor:
        u, weight = u.contiguous(), weight.contiguous()
        ctx.iters, ctx.eps, ctx.squash = iters, eps, squash
        ctx.save_for_backward(u, weight, bias)
        return _forward(u, weight, iters, eps, bias, squash)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_v: Tensor):
        u, weight, bias = ctx.saved_tensors
        g_u, g_w, g_b = _backward(u, weight, g_v, ctx.iters, ctx.eps, bias, ctx.squash,
                                  bias_grad=ctx.needs_input_grad[4])
        return g_u, g_w, None, None, g_b, None


def route(u: Tensor, weight: Tensor, iters: int, eps: float, bias: Optional[Tensor] = None,
          squash_fn: str = "sabour") -> Tensor:
    """Parents v (n, J, Dout) of children u (n, K, Din) through weight (K, J, Dout, Din).

    Equal, to floating-point rounding, to ``dynamic_routing(capsule_votes(u, weight), iters,
    eps=eps, bias=bias, squash_fn=squash_fn)[0]``; differentiable in u, weight and bias. ``bias``: None,
    or a parent bias (J, Dout) in u's dtype, added to s_j before the squash in every iteration;
    ``squash_fn``: a key of :data:`SQUASHES`. CPU float32/float64 only: call :func:`usable` first.
    """
    if iters < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iters}")
    if u.dim() != 3 or weight.dim() != 4 or u.shape[1] != weight.shape[0] or u.shape[2] != weight.shape[3]:
        raise ValueError(f"route: u must be (n, K, Din) and weight (K, J, Dout, Din); got {tuple(u.shape)} "
                         f"and {tuple(weight.shape)}")
    if u.dtype != weight.dtype:
        raise ValueError(f"route: u is {u.dtype} but weight is {weight.dtype}")
    if weight.shape[2] > MAX_DIMS:
        raise ValueError(f"route: the fused kernel takes votes of at most {MAX_DIMS} dims, got {weight.shape[2]}")
    if squash_fn not in SQUASHES:
        raise ValueError(f"route: the fused kernel's squash_fn is one of {tuple(SQUASHES)}, got {squash_fn!r}")
    if bias is not None:
        if tuple(bias.shape) != tuple(weight.shape[1:3]):
            raise ValueError(f"route: bias must be (J, Dout) = {tuple(weight.shape[1:3])}, got {tuple(bias.shape)}")
        if bias.dtype != u.dtype:
            raise ValueError(f"route: u is {u.dtype} but bias is {bias.dtype}")
    if _load() is None:
        raise RuntimeError(status())
    squash = SQUASHES[squash_fn]
    if (bias is not None or squash) and _abi < 3:
        raise RuntimeError(f"route: this kernel build (ABI {_abi}) routes without bias and with Sabour's squash only")
    return _FusedRouting.apply(u, weight, iters, float(eps), bias, squash)


def _squash_factor(q: float, eps: float, squash_fn: str, dtype: torch.dtype) -> tuple[float, float]:
    """The kernel's squash factor f(q) and its derivative f'(q) (v = f(|s|^2) s) in ``dtype``: for the tests."""
    if _load() is None or _abi < 3:
        raise RuntimeError(status())
    out = torch.empty(2, dtype=dtype)
    suffix = "f64" if dtype == torch.float64 else "f32"
    getattr(_lib, f"capslib_squash_factor_{suffix}")(q, eps, SQUASHES[squash_fn], _ptr(out))
    return out[0].item(), out[1].item()


def main() -> int:
    """Build the kernel now (scripts/setup.sh calls this at install time); a failure is a notice,
    not an error: the library then runs the PyTorch path."""
    try:
        path = build(verbose=True)
        print(f"capslib: fused routing kernel ready: {path}")
    except RuntimeError as exc:
        print(f"capslib: NOTICE: {exc}\ncapslib: capsule layers will use the slower PyTorch routing path.",
              file=sys.stderr)
    return 0
