"""Fused CPU kernels of the strong-ticket hot path, with the torch formulation as fallback.

Edge-popup's step on the CPU spends its mask overhead in many elementwise passes over the scores
(key ``|S|``, comparisons, counts, the band gather, the mask copy, ``grad * W * sign(S)``). On small
networks (LeNet-300-100) those passes cost more than the dense step itself. C++ kernels
(``csrc/mask_kernels.cpp``) do the same work in fewer passes:

* :func:`masked_weight` -- a score mask's whole step in one call: the exact top-k inside a band around
  last step's threshold, the mask and a kept masked weight updated in place where the mask changes, and
  the masked weight returned through a C++ autograd node whose backward is the straight-through score
  gradient (written over the incoming gradient when nothing else holds it);
* :func:`band_select` -- the band selection itself, writing the float mask and the masked weight (fresh,
  or incrementally), used by :class:`ticketlab.sparsity.selection.BandSelector`; :func:`full_select` for small
  tensors;
* :func:`shrink_kept` -- one round of SynFlow's global top-k among the weights kept so far, scored,
  selected and applied to the masks in one call;
* :func:`score_grad` -- the straight-through score gradient ``dL/dS = g * W (* sign(S))``
  (used by :func:`ticketlab.sparsity.straight_through.straight_through`).

They give bit-identical results to the torch ops they replace (the tests compare them).

Building. The C++ source is compiled once per environment with ``torch.utils.cpp_extension.load`` (a C++
compiler and ``ninja`` are needed): ``make install`` does it (``python -m ticketlab.sparsity.kernels``),
otherwise the first run that needs them does, announcing the build and its duration (22 s measured on an idle
2-core machine, minutes on a loaded one). The built library lives under
``$TICKETLAB_KERNELS_DIR`` (default ``$XDG_CACHE_HOME/ticketlab/kernels``, i.e.
``~/.cache/ticketlab/kernels``) in a folder named by a hash of the source, torch's version and the Python
ABI, so every checkout and virtualenv with the same source and torch shares one build, and a changed
source or torch gets its own. Later runs import the library directly (milliseconds; no ninja, no lock).
While one process builds, another that needs the kernels does not wait: it says who is building and runs
the torch ops (the same masks). A build lock left by a killed build is named and removed. Where the build
fails (no compiler, no ninja), one warning names the reason and the torch ops run instead: slower on small
networks, same masks. ``TICKETLAB_KERNELS=torch`` turns the kernels off. CUDA tensors always take the torch
path (one kernel each already, no host synchronisation).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ticketlab.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "mask_kernels.cpp"
NAME = "ticketlab_mask_kernels"
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)
_ext: Any = None
_tried = False


def kernels_dir() -> Path:
    """The folder of this source's build: ``<root>/<hash>``.

    ``<root>`` is ``$TICKETLAB_KERNELS_DIR``, else ``$XDG_CACHE_HOME/ticketlab/kernels`` (``~/.cache`` when
    unset); ``<hash>`` covers the C++ source, the flags, torch's version and the Python ABI tag, so a build is
    reused exactly where it was built for.
    """
    root = os.environ.get("TICKETLAB_KERNELS_DIR")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "ticketlab", "kernels")
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(f"{torch.__version__}|{sysconfig.get_config_var('SOABI')}|{CFLAGS}|{LDFLAGS}".encode())
    return Path(root) / h.hexdigest()[:16]


def _import(path: Path) -> Any:
    """Import the built extension module from its shared library."""
    spec = importlib.util.spec_from_file_location(NAME, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an importable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _library(folder: Path) -> Path:
    return folder / f"{NAME}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"


def _build(folder: Path, wait: bool) -> Any:
    """Build into ``folder`` under its lock, or return ``None`` when another process holds it and ``not wait``."""
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / "build.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            log.warning("the fused CPU mask kernels are being built by %s in %s; this run uses the torch ops "
                        "(same masks, slower on small networks) instead of waiting", holder, folder)
            return None
        library = _library(folder)
        if library.exists():  # built while this process waited for the lock
            return _import(library)
        compiler = os.environ.get("CXX") or "c++"
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (install g++ or set CXX)")
        if shutil.which("ninja") is None and shutil.which("ninja", path=os.path.dirname(sys.executable)) is None:
            raise RuntimeError("ninja is not installed (pip install ninja)")
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {os.uname().nodename}")
        lock.flush()
        build = folder / "build"
        stale = build / "lock"  # torch's own build baton: only a killed build leaves it while we hold ours
        if stale.exists():
            log.warning("removing a stale build lock %s left by an interrupted kernel build", stale)
            stale.unlink()
        build.mkdir(exist_ok=True)
        log.warning("building the fused CPU mask kernels (C++, once per environment and torch version; about "
                    "20 to 40 s on an idle 2-core machine, minutes on a busy one) in %s", folder)
        start = time.perf_counter()
        cpp_log = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_log.level
        cpp_log.setLevel(logging.ERROR)  # its import warns "No CUDA runtime is found" on CPU-only machines
        try:
            from torch.utils.cpp_extension import load
        finally:
            cpp_log.setLevel(level)
        module = load(name=NAME, sources=[str(SOURCE)], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                      build_directory=str(build), verbose=False)
        tmp = library.with_name(library.name + f".{os.getpid()}.tmp")
        shutil.copyfile(module.__file__, tmp)
        os.replace(tmp, library)
        log.warning("built the fused CPU mask kernels in %.1f s; later runs load them from %s",
                    time.perf_counter() - start, library)
        return module


def native(wait: bool = False) -> Any:
    """The compiled extension module, or ``None`` (turned off by ``TICKETLAB_KERNELS=torch``, being built by
    another process, or the build failed: then a warning names the reason once).

    Args:
        wait: wait for another process's build of the same source instead of using the torch ops.

    Raises:
        ConfigError: ``TICKETLAB_KERNELS`` is neither ``native`` nor ``torch``.
    """
    global _ext, _tried
    if _tried:
        return _ext
    choice = os.environ.get("TICKETLAB_KERNELS", "native").strip().lower()
    if choice not in ("native", "torch"):
        raise ConfigError(f"TICKETLAB_KERNELS={choice!r} is not allowed; choose native (the default) or torch.")
    _tried = True
    if choice == "torch":
        return None
    folder = None
    try:
        folder = kernels_dir()
        library = _library(folder)
        _ext = _import(library) if library.exists() else _build(folder, wait)
    except Exception as e:  # noqa: BLE001 -- any build problem means: use the torch ops
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]  # a compiler's own message, not its command line
        first = (errors[-1] if len(lines) > 1 and errors else lines[0] if lines else "")[:300]
        log.warning("fused CPU mask kernels unavailable (%s: %s; build folder %s); using torch ops (same masks, "
                    "slower on small networks). Set TICKETLAB_KERNELS=torch to skip the build.", type(e).__name__,
                    first, folder)
        _ext = None
    return _ext


_NONE = torch.empty(0)


def band_select(scores: Tensor, absval: bool, lo: float, hi: float, k: int, out: Tensor,
                weight: Tensor | None = None, product: Tensor | None = None,
                incremental: bool = False) -> tuple[int, int, int, float] | None:
    """Exact top-``k`` of ``key = |scores|`` (``absval``) or ``scores``, if the k-th largest key lies in ``[lo, hi]``.

    One pass writes ``out[i] = 1`` for ``key > hi`` and 0 elsewhere and gathers the band entries; the
    ``(k - #above)``-th largest band entry is the threshold ``v``; band entries above ``v`` are kept, then
    entries equal to ``v`` lowest flat index first: exactly ``k`` kept, the same mask as
    :func:`ticketlab.sparsity.selection.topk_mask`. With ``weight`` and ``product``, the same pass writes
    ``product = weight * out`` (the masked weight of the forward pass).

    With ``incremental``, ``out`` (and ``product``) already hold an earlier selection of the same tensors
    (``product == weight * out``): the pass then only reads, and writes just the entries whose mask
    changes. Between two steps of edge-popup that is a few hundred of the layer's entries, so the pass
    moves about half the bytes of a fresh one (no mask or product written, no weight read).

    Args:
        scores: ``n`` entries (any shape).
        absval: rank by ``|scores|`` (else by ``scores``).
        lo, hi: the band, ``lo <= hi``.
        k: entries to keep.
        out: ``n`` entries; on success holds the 0/1 mask.
        weight, product: optional, ``n`` entries each.
        incremental: ``out`` and ``product`` hold an earlier selection (see above).

    Returns:
        ``None`` when the kernels are not built; else ``(status, n_above, n_band, v)``: status 0 = ``out``
        (and ``product``) hold the result, 1 = the band missed the k-th largest (``out`` and ``product``
        are partial; select over everything), 2 = NaN keys (partial too), 3 = a tensor is not a dense
        (contiguous or channels-last) float32 CPU tensor with the scores' sizes and strides, or ``k`` is
        outside ``[1, n)`` (nothing written). Dense tensors of other layouts are walked in memory order; ties
        are still kept lowest row-major flat index first.

    Source: the top-k of edge-popup (Ramanujan et al. 2020, Algorithm 1), exact with lowest-index ties.
    """
    ext = native()
    if ext is None:
        return None
    fused = weight is not None and product is not None
    status, above, band, v = ext.band_select(scores, absval, lo, hi, k, out, weight if fused else _NONE,
                                             product if fused else _NONE, bool(incremental))
    return int(status), int(above), int(band), v


def full_select(scores: Tensor, absval: bool, k: int, out: Tensor) -> tuple[int, float] | None:
    """Exact top-``k`` of the key (see :func:`band_select`) by ``nth_element`` over a copy of the keys, written
    into ``out`` (float 0/1): for small tensors, where it costs a few microseconds.

    Args:
        scores, out: ``n`` entries each.
        k: ``1 <= k <= n``.

    Returns:
        ``None`` when the kernels are not built; else ``(status, v)``: status 0 = done (``v`` the k-th
        largest key), 2 = NaN keys, 3 = unfit tensors or ``k`` (nothing written in either case).

    Source: as :func:`band_select`.
    """
    ext = native()
    if ext is None:
        return None
    status, v = ext.full_select(scores, absval, k, out)
    return int(status), v


def shrink_kept(weights: list[Tensor], grads: list[Tensor], kept: list[Tensor], masks: list[Tensor],
                total: int, zero_weights: bool = False) -> tuple[int, list[Tensor]] | None:
    """One global top-``total`` round among the kept entries of several tensors, scored ``|w * g|`` (SynFlow).

    The same result as :func:`ticketlab.pruners.score_based.shrink_global` on the scores ``|g[i] * w[i]|`` (rounded to
    float32) of the kept entries: ties at the threshold are kept lowest position first (tensor order, then
    index). The kernel zeroes ``masks[t]`` at the dropped entries itself (and ``weights[t]`` with
    ``zero_weights``: weights that hold their masks folded in stay so) and moves the kept indices to the front
    of ``kept[t]``; the version counters of what it writes are bumped.

    Args:
        weights, grads: per tensor, float32 or float64, contiguous, ``n_t`` entries each (any shape); ``weights``
            written in place with ``zero_weights``.
        kept: per tensor, the ascending flat indices kept so far (int64, 1-D, contiguous; reordered in place).
        masks: per tensor, the float32 mask (``n_t`` entries, contiguous), written in place.
        total: entries to keep in all.
        zero_weights: also zero ``weights[t]`` where the mask is zeroed.

    Returns:
        ``None`` when the kernels are not built; else ``(status, kept)``: status 0 = done, ``kept`` the new
        index tensors (prefixes of the given ones); 1 = the threshold would be 0 or ``total`` exceeds the kept
        count (score every entry instead); 2 = NaN scores; 3 = unfit tensors (for 1 to 3 nothing is written).

    Source: SynFlow's score and global pruning round (Tanaka et al. 2020, Algorithm 1).
    """
    ext = native()
    if ext is None:
        return None
    r = ext.shrink_kept(weights, grads, kept, masks, int(total), bool(zero_weights))
    if r[0] != 0:
        return int(r[0]), []
    return 0, [i[:n] for i, n in zip(kept, r[1:], strict=True)]


def masked_weight(absval: bool) -> Any | None:
    """The fused CPU step of one :class:`~ticketlab.sparsity.masks.ScoreMask` (``None``: kernels not built).

    The returned object's ``forward(state, weight, scores, mask, k)`` does, in one call: if the scores changed
    since its last call, the exact top-``k`` of the key (``|scores|`` if ``absval``) inside the band of
    ``state`` (the :class:`ticketlab.sparsity.selection.BandSelector`'s state, updated like its ``_update``), written
    into ``mask``, with ``weight * mask`` kept between calls and updated only where the mask changes; then
    the masked weight with the straight-through gradient
    (:func:`ticketlab.sparsity.straight_through.straight_through`, as a C++ autograd node). It returns
    ``None`` when the Python path must take the step: a tensor that is not a dense float32 CPU tensor with the
    scores' sizes and strides (small tensors: contiguous), ``k`` outside
    ``[1, n)``, no band yet, a band miss, NaN scores. Writes bump the version counters of ``mask`` and of
    the kept product, so an autograd graph that saved the old values raises instead of using new ones.
    ``selected(scores, k)`` says whether the mask already is the top-``k`` of these scores (same storage
    and version); ``adopt(scores, k)`` records that the Python path just made it so, ``forget()`` that it
    is not.

    Source: edge-popup's forward (Ramanujan et al. 2020, Algorithm 1), exact top-k with lowest-index ties.
    """
    ext = native()
    return None if ext is None else ext.MaskedWeight(bool(absval))


def score_grad(grad: Tensor, weight: Tensor, scores: Tensor, signed: bool) -> Tensor | None:
    """``grad * weight * sign(scores)`` (``signed``) or ``grad * weight`` in one pass (shape of ``scores``), or
    ``None`` when the kernels are not built or a tensor is not a dense CPU float32 tensor with the scores'
    sizes and strides (the result has those strides too).

    Source: Ramanujan et al. 2020, Sec. 3 (straight-through estimator of the top-k).
    """
    ext = native()
    if ext is None:
        return None
    return ext.score_grad(grad, weight, scores, signed)


__all__ = ["band_select", "full_select", "masked_weight", "native", "score_grad", "shrink_kept"]


if __name__ == "__main__":  # python -m ticketlab.sparsity.kernels: build (or find) them now, e.g. at install time
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        ext = native(wait=True)
        where = f"ready in {kernels_dir()}" if ext is not None else "not built (see above)"
        print(f"fused CPU mask kernels: {where}")
        sys.exit(0 if ext is not None else 1)
