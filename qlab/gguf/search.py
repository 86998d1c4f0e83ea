"""The k-quant scale searches of ggml-quants.c, vectorised over all (sub-)blocks at once.

Each function takes x [B, n] (one row per sub-block) and returns per-block scales and the codes L [B, n]
exactly as ggml computes them; loops run only over ggml's small fixed candidate sets, refinement passes
and the n positions of a sub-block (sums are accumulated left to right as in C, so they match bit for bit).
Internally arrays are held transposed, [n, B], so every step is a contiguous vector operation over blocks.

- ``make_qx_quants``  symmetric: try scales -(nmax + 0.1 i)/max, i = -9..9, keep the best weighted
  least-squares fit  scale = sum(w x l) / sum(w l^2)  (maximises (sum w x l)^2 / sum w l^2).
- ``make_q3_quants``  symmetric with coordinate-descent refinement of single codes (5 passes).
- ``make_qkx_quants`` asymmetric (scale, min): for candidate steps (rmin + rdelta i + nmax)/(max - min),
  solve the 2x2 weighted least-squares for (scale, min), keep the lowest weighted error (L2 or L1).
  ``make_qkx2_quants`` and ``make_qkx3_quants`` differ only in the degenerate-block test.
- ``make_qp_quants``  positive values (the sub-block scales themselves) on a grid 0..nmax, weighted.
"""

from __future__ import annotations

import numpy as np

from qlab.gguf.blocks import GROUP_MAX_EPS, f32c, nearest_int

F = np.float32
_M = F(12582912.0)
_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def _T(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32).T)


def _sum(a: np.ndarray) -> np.ndarray:
    """``float s = 0; for i: s += a[i]`` over axis 0 of [n, B], in C's order."""
    s = a[0] + F(0)
    for i in range(1, a.shape[0]):
        s += a[i]
    return s


def _sum_from_first(a: np.ndarray) -> np.ndarray:
    """``float s = a[0]; for i >= 1: s += a[i]`` over axis 0."""
    s = a[0].copy()
    for i in range(1, a.shape[0]):
        s += a[i]
    return s


def _absmax(x: np.ndarray) -> np.ndarray:
    """``amax = 0, max = 0; if (|x_i| > amax) {amax = |x_i|; max = x_i}`` over axis 0: the signed value.

    Reductions give |max| and whether +amax / -amax occur; only blocks holding both look up which came first.
    NaN never wins a C comparison: fmax/fmin skip it.
    """
    a = np.fmax.reduce(np.abs(x), axis=0)
    has_pos = np.fmax.reduce(x, axis=0) == a
    has_neg = np.fmin.reduce(x, axis=0) == -a
    v = np.where(has_pos, a, -a)
    both = np.flatnonzero(has_pos & has_neg & (a > 0))
    if both.size:
        first = np.argmax(np.abs(x[:, both]) == a[both], axis=0)
        v[both] = x[first, both]
    return np.where(a > 0, v, F(0)).astype(np.float32)


def _min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``min = max = x[0]; if (x_i < min) ...; if (x_i > max) ...`` over axis 0 (x finite).

    Only the sign of a zero minimum depends on order (the first zero wins), so only those blocks look it up.
    """
    mn, mx = x.min(axis=0), x.max(axis=0)
    zero = np.flatnonzero(mn == 0)
    if zero.size:
        mn[zero] = x[np.argmax(x[:, zero] == 0, axis=0), zero]
    return mn, mx


def _codes(t: np.ndarray, lo: float | None, hi: float, fast: bool) -> np.ndarray:
    """nearest_int then clamp, in place on float32 t; ``fast`` (finite, bounded |t| < 2^22) uses (t+M)-M."""
    if fast:
        t += _M
        t -= _M
    else:
        t[...] = nearest_int(t)
    if lo is None:
        np.minimum(t, F(hi), out=t)
    else:
        np.clip(t, F(lo), F(hi), out=t)
    return t


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_qx_quants(rmse_type=1): returns (scale [B], L [B, n] in 0..2*nmax-1)."""
    xt = _T(x)
    with np.errstate(**_ERR):
        mx = _absmax(xt)
        zero = np.abs(mx) < GROUP_MAX_EPS
        w = _T(qw) if qw is not None else xt * xt
        wx = w * xt

        def fit(iscale):
            iscale = np.where(zero, F(0), iscale).astype(np.float32)
            lq = _codes(xt * iscale, -nmax, nmax - 1, bool(np.isfinite(iscale).all()))
            return iscale, _sum(wx * lq), _sum(w * lq * lq)

        best_iscale, sumlx, suml2 = fit(F(-nmax) / mx)
        scale = np.where(suml2 != 0, sumlx / suml2, F(0))
        best = scale * sumlx
        for i in range(-9, 10):
            if i == 0:
                continue
            iscale, sumlx, suml2 = fit(-(F(nmax) + f32c(0.1) * F(i)) / mx)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = np.where(upd, iscale, best_iscale)
            scale = np.where(upd, sumlx / suml2, scale)
            best = np.where(upd, scale * sumlx, best)
        L = _codes(xt * best_iscale, -nmax, nmax - 1, bool(np.isfinite(best_iscale).all()))
        L = np.where(zero, 0, L.astype(np.int32) + nmax)
        scale = np.where(zero, F(0), scale).astype(np.float32)
    return scale, np.ascontiguousarray(L.T)


def _refine(x, w, L, sumlx, suml2, lo, hi, qp: bool):
    """ggml's 5 passes of single-code coordinate descent (make_q3_quants / make_qp_quants), in place on L [n, B].

    L holds float codes; for make_qp_quants (qp=True) ggml keeps them in uint8_t, hence the & 0xFF.
    A block whose pass changed nothing keeps its state, so its later passes would change nothing either:
    each pass only visits the blocks the previous pass changed (exactly ggml's ``if (!n_changed) break``).
    """
    active = np.arange(x.shape[1])
    for _ in range(5):
        xa, wa, La, slx_a, sl2_a = x[:, active], w[:, active], L[:, active], sumlx[active], suml2[active]
        wxa = wa * xa
        changed = np.zeros(active.size, dtype=bool)
        for i in range(x.shape[0]):
            wi, xi, wxi, Li = wa[i], xa[i], wxa[i], La[i]
            slx = slx_a - wxi * Li
            sl2 = sl2_a - wi * Li * Li
            cond = (slx > 0) & (sl2 > 0) if qp else slx > 0
            new_l = nearest_int(xi * sl2 / slx)
            new_l = np.minimum(new_l, hi) if lo is None else np.clip(new_l, lo, hi)
            nf = new_l.astype(np.float32)
            cond &= nf != Li
            slx2 = slx + wxi * nf
            sl22 = sl2 + wi * nf * nf
            acc = cond & (slx2 * slx2 * sl2_a > slx_a * slx_a * sl22)
            if not qp:
                acc &= sl22 > 0
            if acc.any():
                changed |= acc
                La[i] = np.where(acc, (new_l & 0xFF).astype(np.float32) if qp else nf, Li)
                slx_a = np.where(acc, slx2, slx_a)
                sl2_a = np.where(acc, sl22, sl2_a)
        L[:, active], sumlx[active], suml2[active] = La, slx_a, sl2_a
        active = active[changed]
        if active.size == 0:
            break
    return sumlx, suml2


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_q3_quants(do_rmse=true): returns (scale [B], L [B, n] in 0..2*nmax-1)."""
    xt = _T(x)
    with np.errstate(**_ERR):
        mx = _absmax(xt)
        zero = np.abs(mx) < GROUP_MAX_EPS
        iscale = np.where(zero, F(0), F(-nmax) / mx).astype(np.float32)
        L = _codes(xt * iscale, -nmax, nmax - 1, bool(np.isfinite(iscale).all()))
        w = xt * xt
        sumlx = _sum(w * xt * L)
        suml2 = _sum(w * L * L)
        sumlx, suml2 = _refine(xt, w, L, sumlx, suml2, -nmax, nmax - 1, qp=False)
        scale = np.where(suml2 > 0, sumlx / suml2, F(0))
        L = np.where(zero, 0, L.astype(np.int32) + nmax)
        scale = np.where(zero, F(0), scale).astype(np.float32)
    return scale, np.ascontiguousarray(L.T)


def make_qkx_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
                    use_mad: bool, v3: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml make_qkx2_quants (v3=False) / make_qkx3_quants (v3=True): (scale [B], the_min [B], L [B, n]).

    Dequantized value = scale * L - the_min. ggml keeps using the running best min when it tries the next
    candidate step, so the min a candidate is computed against is tracked per block.
    """
    xt, wt = _T(x), _T(w)
    with np.errstate(**_ERR):
        mn, mx = _min_max(xt)
        sum_w = _sum_from_first(wt)
        sum_x = _sum_from_first(wt * xt)
        mn = np.where(mn > 0, F(0), mn).astype(np.float32)
        degenerate = (mx <= mn) if v3 else (mx == mn)
        tb = np.empty_like(xt)
        db = np.empty_like(xt)

        def codes(iscale, xmin):
            iscale = np.where(degenerate, F(0), iscale).astype(np.float32)
            np.subtract(xt, xmin, out=tb)
            np.multiply(tb, iscale, out=tb)
            return iscale, _codes(tb, 0, nmax, bool(np.isfinite(iscale).all()))

        def err(scale, mins, lf):
            np.multiply(lf, scale, out=db)
            np.add(db, mins, out=db)
            np.subtract(db, xt, out=db)
            if use_mad:
                np.abs(db, out=db)
            else:
                np.multiply(db, db, out=db)
            np.multiply(db, wt, out=db)
            return _sum(db)

        best_iscale, lf = codes(F(nmax) / (mx - mn), mn)
        best_xmin = mn
        scale = F(1) / best_iscale
        best = err(scale, mn, lf)
        cur_min = mn
        for i in range(nstep + 1 if nstep >= 1 else 0):
            iscale, lf = codes((f32c(rmin) + f32c(rdelta) * F(i) + F(nmax)) / (mx - cur_min), cur_min)
            wl = wt * lf
            sum_l = _sum(wl)
            sum_l2 = _sum(wl * lf)
            sum_xl = _sum(wl * xt)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min = np.where(pos, F(0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            e = err(this_scale, this_min, lf)
            upd = (D > 0) & (e < best)
            best_iscale = np.where(upd, iscale, best_iscale)
            best_xmin = np.where(upd, cur_min, best_xmin)
            best = np.where(upd, e, best)
            scale = np.where(upd, this_scale, scale)
            cur_min = np.where(upd, this_min, cur_min)
        _, L = codes(best_iscale, best_xmin)  # the winning candidate's codes, recomputed once
        L = np.where(degenerate, 0, L.astype(np.int32))
        scale = np.where(degenerate, F(0), scale).astype(np.float32)
        cur_min = np.where(degenerate, mn, cur_min).astype(np.float32)
    return scale, -cur_min, np.ascontiguousarray(L.T)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_qp_quants: quantize non-negative x (sub-block scales) to 0..nmax: (scale [B], L [B, n])."""
    xt, w = _T(x), _T(qw)
    with np.errstate(**_ERR):
        mx = np.zeros(xt.shape[1], np.float32)
        for i in range(xt.shape[0]):  # MAX(max, x[i])
            mx = np.where(mx > xt[i], mx, xt[i])
        zero = mx < GROUP_MAX_EPS

        def mse(scale, lq):
            diff = xt - scale * lq
            return _sum(w * diff * diff)

        iscale = F(nmax) / mx
        L0 = (nearest_int(xt * iscale) & 0xFF).astype(np.float32)  # stored in uint8_t before the mse is taken
        best = mse(F(1) / iscale, L0)
        for i in range(-4, 5):
            if i == 0:
                continue
            iscale_i = (f32c(0.1) * F(i) + F(nmax)) / mx
            lq = np.minimum(nearest_int(xt * iscale_i), nmax).astype(np.float32)
            m = mse(F(1) / iscale_i, lq)
            upd = m < best
            best = np.where(upd, m, best)
            iscale = np.where(upd, iscale_i, iscale)
        li = np.minimum(nearest_int(xt * iscale), nmax)
        lf = li.astype(np.float32)
        sumlx = _sum(w * xt * lf)
        suml2 = _sum(w * lf * lf)
        L = (li & 0xFF).astype(np.float32)
        sumlx, suml2 = _refine(xt, w, L, sumlx, suml2, None, nmax, qp=True)
        scale = np.where(suml2 > 0, sumlx / suml2, F(0))
        L = np.where(zero, 0, L.astype(np.int32))
        scale = np.where(zero, F(0), scale).astype(np.float32)
    return scale, np.ascontiguousarray(L.T)
