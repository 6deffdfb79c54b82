"""The contact window search behind :func:`agent._contacts.find_windows`.

How windows are found
---------------------
1. Every satellite is propagated on one coarse time grid (one ``SatrecArray``
   call), and for every (satellite, station, sample) the code computes the
   sine of the geometric elevation ``z``, its time derivative ``z'`` (from the
   SGP4 velocity), the mask function ``f = z - sin(mask(azimuth))`` and ``f'``.
2. The step is :data:`STEPS_PER_REVOLUTION` samples per revolution of the
   satellite *relative to the station*, counted at the fastest (perigee)
   angular rate, so at most one elevation extremum falls between two samples
   (culminations of successive approaches are about half a relative
   revolution apart).  Hence every culmination shows up as a sign change of
   ``z'`` across one step, however short the pass: passes much shorter than
   30 s are found too, not only those that straddle a sample.
3. Culminations whose samples are all below the mask are refined only when the
   geocentric angle between satellite and station could, within the step,
   come inside the visibility cone: the angle moves at most at the perigee
   angular rate plus the Earth's rotation, so between samples ``a`` and ``b``
   it stays above ``(g_a + g_b - rate * step) / 2`` and the test never drops
   a pass.
4. Each bracketed extremum starts from the peak of the cubic Hermite
   interpolant of the two samples (values and rates) and is refined by
   secant steps on the derivative, kept inside the bracket (regula falsi,
   then bisection, as fallbacks) to :data:`TCA_TOLERANCE_S`.  Every mask
   crossing starts from the root of the Hermite cubic and is refined by
   bracketed, bisection-safeguarded Newton steps to :data:`TIME_TOLERANCE_S`.
   Each trial time is an SGP4 call, so crossing times are SGP4-exact to the
   tolerance; the interpolants only make the first guess good.
5. Capacities integrate the rate model of :mod:`agent._stations` over the
   window on a :data:`CAPACITY_STEP_S` grid, with positions from cubic
   Hermite interpolation of the coarse ECEF samples (position and velocity at
   each end), about 0.1 km off for LEO at the default step; that error is
   negligible beside the rate table's dB steps.
6. A station with ``refraction=True`` applies its mask to the apparent
   elevation: ``f`` then uses the geometric mask ``m - R(m)`` (exact for
   Bennett's formula, see :mod:`agent._stations`), so crossings are refined
   exactly as above, and the maximum elevation is reported as apparent.

Only numpy and sgp4 are imported: this module also runs on the flight computer.
"""

import math
from datetime import timedelta

import numpy as np
from sgp4.api import Satrec

from agent._contacts import ContactWindow, PassSearch, SatelliteStatus, WindowFlag
from agent._geo import DAY_S
from agent._orbit import (
    SGP4_ERROR_TEXT,
    datetime_to_jd,
    propagate_teme,
    teme_to_ecef_state_km,
)
from agent._stations import apparent_elevation_deg, rate_fraction

STEPS_PER_REVOLUTION = 24
MAX_STEP_S = 900.0
TIME_TOLERANCE_S = 1e-3
# TCA needs less: near a zenith pass the elevation falls at most ~1 deg/s, so
# 0.01 s of TCA error is < 0.01 deg of maximum elevation.
TCA_TOLERANCE_S = 1e-2
CAPACITY_STEP_S = 15.0
MAX_ITERATIONS = 60
# Geodetic "up" differs from the geocentric radial by < 0.2 deg; the angle
# screen uses this much extra room so the spherical test stays conservative.
_SCREEN_MARGIN_DEG = 0.5
# SGP4 perturbations change the angular rate by well under this factor.
_RATE_MARGIN = 1.05
_SCREEN_RADIUS_MARGIN_KM = 50.0
_EARTH_ROTATION_RAD_S = 7.2921158553e-5

_ZMAX, _FPEAK, _FDIP = 0, 1, 2


def coarse_step_s(satrec: Satrec) -> float:
    """The grid step for one satellite; see the module docstring, point 2."""
    n_rad_s = satrec.no_kozai / 60.0
    e = min(max(satrec.ecco, 0.0), 0.99)
    perigee_rate = n_rad_s * (1.0 + e) ** 2 / (1.0 - e * e) ** 1.5
    relative_rate = _RATE_MARGIN * perigee_rate + _EARTH_ROTATION_RAD_S
    return min(MAX_STEP_S, 2.0 * math.pi / relative_rate / STEPS_PER_REVOLUTION)


class _Finder:
    def __init__(self, satellites, stations, start, span_s):
        self.names = [name for name, _ in satellites]
        self.satrecs = [sat for _, sat in satellites]
        self.stations = stations
        self.start = start
        self.span_s = float(span_s)
        self.jd0, self.fr0 = datetime_to_jd(start)

        self.site = np.array([s.ecef_km() for s in stations])
        self.enu = np.array([s.enu_matrix() for s in stations])
        self.site_norm = np.linalg.norm(self.site, axis=1)
        self.site_unit = self.site / self.site_norm[:, None]
        self.has_mask = np.array([s.has_mask for s in stations])
        # the floor without a horizon mask: the geometric elevation of an
        # apparent min_elevation_deg when the station models refraction
        floor_deg = [
            s.min_elevation_deg if s.has_mask else float(s.geometric_mask_deg(0.0))
            for s in stations
        ]
        self.sin_floor = np.sin(np.radians(floor_deg))

    # -- evaluation -----------------------------------------------------------

    def _state_at(self, sat_idx: np.ndarray, t_s: np.ndarray):
        """ECEF position and velocity of satellite ``sat_idx[i]`` at ``t_s[i]``.

        ``sat_idx`` must be sorted, so each satellite is one ``sgp4_array`` call.
        """
        n = len(t_s)
        r = np.empty((n, 3))
        v = np.empty((n, 3))
        fr = self.fr0 + t_s / DAY_S
        jd = np.full(n, self.jd0)
        bounds = np.flatnonzero(np.diff(sat_idx)) + 1
        starts = np.concatenate([[0], bounds])
        stops = np.concatenate([bounds, [n]])
        for a, b in zip(starts, stops, strict=True):
            sat = self.ok_satrecs[sat_idx[a]]
            err, r[a:b], v[a:b] = sat.sgp4_array(jd[a:b], fr[a:b])
            bad = err != 0
            if bad.any():
                r[a:b][bad] = np.nan
                v[a:b][bad] = np.nan
        return teme_to_ecef_state_km(r, v, jd, fr)

    def _geometry(self, r, v, sta):
        """z = sin(elevation), z', f = z - sin(mask), f' and azimuth for points.

        ``r``, ``v`` are ECEF ``(..., 3)``; ``sta`` is a station index array
        broadcastable to ``r.shape[:-1]`` or a single int.
        """
        site = self.site[sta]
        enu = self.enu[sta]
        rho = r - site
        if np.ndim(sta) == 0:
            local = rho @ enu.T
            local_dot = v @ enu.T
        else:
            local = np.einsum("...ij,...j->...i", enu, rho)
            local_dot = np.einsum("...ij,...j->...i", enu, v)
        range_km = np.sqrt(np.einsum("...i,...i->...", local, local))
        z = local[..., 2] / range_km
        range_rate = np.einsum("...i,...i->...", local, local_dot) / range_km
        z_dot = (local_dot[..., 2] - z * range_rate) / range_km
        f = z - self.sin_floor[sta]
        f_dot = z_dot.copy()
        if np.any(self.has_mask[sta]):
            f, f_dot = self._apply_masks(sta, local, local_dot, z, z_dot, f, f_dot)
        z = np.where(np.isfinite(z), z, -1.0)
        f = np.where(np.isfinite(f), f, -2.0)
        return z, z_dot, f, f_dot, range_km

    def _apply_masks(self, sta, local, local_dot, z, z_dot, f, f_dot):
        east, north = local[..., 0], local[..., 1]
        east_dot, north_dot = local_dot[..., 0], local_dot[..., 1]
        horiz2 = np.maximum(east * east + north * north, 1e-12)
        az_deg = np.degrees(np.arctan2(east, north)) % 360.0
        az_rate = (east_dot * north - east * north_dot) / horiz2  # rad/s
        sta_b = np.broadcast_to(sta, z.shape)
        for j in np.flatnonzero(self.has_mask):
            sel = sta_b == j
            if not sel.any():
                continue
            station = self.stations[j]
            mask_rad = np.radians(station.geometric_mask_deg(az_deg[sel]))
            slope = station.geometric_mask_slope(az_deg[sel])
            f[sel] = z[sel] - np.sin(mask_rad)
            f_dot[sel] = z_dot[sel] - np.cos(mask_rad) * slope * az_rate[sel]
        return f, f_dot

    def _evaluate(self, sat_idx, sta_idx, t_s):
        r, v = self._state_at(sat_idx, t_s)
        z, z_dot, f, f_dot, _ = self._geometry(r, v, sta_idx)
        return z, z_dot, f, f_dot

    # -- refinement -----------------------------------------------------------

    def _refine_extrema(self, jobs):
        """Root of the derivative inside each bracket (safeguarded secant).

        ``jobs`` holds sorted ``sat``, ``sta``, ``a``, ``b``, ``kind``, the
        values ``ga``, ``gb`` and the derivatives ``da`` > 0 >= ``db`` of the
        quantity being maximised (``z`` for _ZMAX, ``f`` for _FPEAK, ``-f``
        for _FDIP).  The first trial is the peak of the cubic Hermite
        interpolant; then secant steps through the last two trials, falling
        back to regula falsi on the bracket, then to bisection.  It stops when
        the next step would move less than TCA_TOLERANCE_S.
        """
        sat, sta, kind = jobs["sat"], jobs["sta"], jobs["kind"]
        a, b = jobs["a"].copy(), jobs["b"].copy()
        da, db = jobs["da"].copy(), jobs["db"].copy()
        n = len(a)
        trial = a + (b - a) * _hermite_peak(
            jobs["ga"], jobs["gb"], da * (b - a), db * (b - a)
        )
        x = np.full(n, np.nan)
        d_prev = np.full(n, np.nan)
        z_out = np.empty(n)
        f_out = np.empty(n)
        active = np.ones(n, dtype=bool)
        for _ in range(MAX_ITERATIONS):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            t = trial[idx]
            z, z_dot, f, f_dot = self._evaluate(sat[idx], sta[idx], t)
            d = np.where(
                kind[idx] == _ZMAX, z_dot, np.where(kind[idx] == _FPEAK, f_dot, -f_dot)
            )
            d = np.where(np.isfinite(d), d, 0.0)
            z_out[idx] = z
            f_out[idx] = f
            right = d > 0  # the root lies to the right of the trial point
            a[idx[right]], da[idx[right]] = t[right], d[right]
            b[idx[~right]], db[idx[~right]] = t[~right], d[~right]

            ai, bi = a[idx], b[idx]
            with np.errstate(divide="ignore", invalid="ignore"):
                secant = t - d * (t - x[idx]) / (d - d_prev[idx])
                falsi = ai + da[idx] * (bi - ai) / (da[idx] - db[idx])
            ok = np.isfinite(secant) & (secant > ai) & (secant < bi)
            nxt = np.where(ok, secant, falsi)
            ok = np.isfinite(nxt) & (nxt > ai) & (nxt < bi)
            nxt = np.where(ok, nxt, 0.5 * (ai + bi))
            done = (np.abs(nxt - t) < TCA_TOLERANCE_S) | (bi - ai < TCA_TOLERANCE_S)
            done |= d == 0.0
            x[idx] = t
            d_prev[idx] = d
            trial[idx] = nxt
            active[idx[done]] = False
        return x, z_out, f_out

    def _refine_crossings(self, jobs):
        """Time where ``f`` crosses zero in each bracket (safeguarded Newton).

        ``sign`` is +1 for a rise (AOS: f(a) <= 0 < f(b)) and -1 for a set.
        """
        sat, sta, sign = jobs["sat"], jobs["sta"], jobs["sign"]
        a, b = jobs["a"].copy(), jobs["b"].copy()
        qa, qb = sign * jobs["fa"], sign * jobs["fb"]
        x = a + (b - a) * _hermite_root(
            qa, qb, sign * jobs["da"] * (b - a), sign * jobs["db"] * (b - a)
        )
        z_out = np.empty(len(a))
        active = np.ones(len(a), dtype=bool)
        for _ in range(MAX_ITERATIONS):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            xi = x[idx]
            z, _, f, f_dot = self._evaluate(sat[idx], sta[idx], xi)
            z_out[idx] = z
            q = sign[idx] * f
            q_dot = sign[idx] * f_dot
            above = q > 0
            b[idx[above]] = xi[above]
            a[idx[~above]] = xi[~above]
            with np.errstate(divide="ignore", invalid="ignore"):
                newton = xi - q / q_dot
            ai, bi = a[idx], b[idx]
            ok = np.isfinite(newton) & (newton > ai) & (newton < bi)
            ok &= np.abs(newton - xi) < 0.5 * (bi - ai)
            nxt = np.where(ok, newton, 0.5 * (ai + bi))
            done = (np.abs(nxt - xi) < TIME_TOLERANCE_S) | (bi - ai < TIME_TOLERANCE_S)
            done |= q == 0.0
            x[idx] = np.where(done & ok, nxt, np.where(done, xi, nxt))
            active[idx[done]] = False
        return x, z_out

    # -- the search -----------------------------------------------------------

    def run(self) -> PassSearch:
        result = PassSearch()
        steps = [coarse_step_s(s) for s in self.satrecs]
        n_steps = max(1, math.ceil(self.span_s / min(steps)))
        h = self.span_s / n_steps
        result.step_s = h
        t_grid = np.arange(n_steps + 1) * h
        t_grid[-1] = self.span_s
        jd = np.full(n_steps + 1, self.jd0)
        fr = self.fr0 + t_grid / DAY_S
        r_teme, v_teme, status = propagate_teme(self.satrecs, jd, fr)
        for i in np.flatnonzero(status):
            code = int(status[i])
            result.failed.append(
                SatelliteStatus(
                    self.names[i], code, SGP4_ERROR_TEXT.get(code, "SGP4 error")
                )
            )
        ok = np.flatnonzero(status == 0)
        if ok.size == 0:
            return result
        self.ok_names = [self.names[i] for i in ok]
        self.ok_satrecs = [self.satrecs[i] for i in ok]
        r, v = teme_to_ecef_state_km(r_teme[ok], v_teme[ok], jd, fr)
        del r_teme, v_teme

        # per-satellite screen parameters (module docstring, point 3)
        rel_rate = np.array(
            [
                2.0 * math.pi / (coarse_step_s(s) * STEPS_PER_REVOLUTION)
                for s in self.ok_satrecs
            ]
        )
        r_max_km = (
            np.array([s.a * s.radiusearthkm * (1.0 + s.ecco) for s in self.ok_satrecs])
            + _SCREEN_RADIUS_MARGIN_KM
        )
        r_norm = np.linalg.norm(r, axis=2)
        r_unit = r / r_norm[..., None]

        ext_parts, cross_parts, grid_tca = [], [], []
        f_first, f_last = [], []
        for j, station in enumerate(self.stations):
            z, z_dot, f, f_dot, _ = self._geometry(r, v, j)
            f_first.append(f[:, 0])
            f_last.append(f[:, -1])
            cos_gamma = r_unit @ self.site_unit[j]
            gamma = np.arccos(np.clip(cos_gamma, -1.0, 1.0))
            m = math.radians(station.lowest_geometric_mask_deg - _SCREEN_MARGIN_DEG)
            cone = (
                np.arccos(np.clip(self.site_norm[j] / r_max_km * math.cos(m), -1, 1))
                - m
            )
            # lowest angle the Lipschitz bound allows between the two samples:
            # gamma(t) >= max(g_a - w (t - a), g_b - w (b - t))
            reach = 0.5 * (gamma[:, :-1] + gamma[:, 1:] - rel_rate[:, None] * h)
            screen = reach <= cone[:, None]

            fa, fb = f[:, :-1], f[:, 1:]
            vis_a, vis_b = fa > 0, fb > 0
            below = ~vis_a & ~vis_b
            zpeak = (z_dot[:, :-1] > 0) & (z_dot[:, 1:] <= 0) & (screen | vis_a | vis_b)
            jobs = [(zpeak, _ZMAX, z_dot, 1.0)]
            if station.has_mask:
                fpeak = (f_dot[:, :-1] > 0) & (f_dot[:, 1:] <= 0) & screen & below
                jobs.append((fpeak, _FPEAK, f_dot, 1.0))
            fdip = (f_dot[:, :-1] < 0) & (f_dot[:, 1:] >= 0) & vis_a & vis_b
            jobs.append((fdip, _FDIP, f_dot, -1.0))
            for sel, kind, deriv, sgn in jobs:
                s_i, k_i = np.nonzero(sel)
                value = z if kind == _ZMAX else f
                ext_parts.append(
                    dict(
                        sat=s_i, sta=np.full(s_i.size, j),
                        kind=np.full(s_i.size, kind),
                        a=t_grid[k_i], b=t_grid[k_i + 1],
                        ga=sgn * value[s_i, k_i], gb=sgn * value[s_i, k_i + 1],
                        da=sgn * deriv[s_i, k_i], db=sgn * deriv[s_i, k_i + 1],
                        fa=fa[s_i, k_i], fb=fb[s_i, k_i],
                        fda=f_dot[s_i, k_i], fdb=f_dot[s_i, k_i + 1],
                    )
                )  # fmt: skip
            for sel, sgn in ((~vis_a & vis_b, 1.0), (vis_a & ~vis_b, -1.0)):
                s_i, k_i = np.nonzero(sel)
                cross_parts.append(
                    dict(
                        sat=s_i, sta=np.full(s_i.size, j),
                        a=t_grid[k_i], b=t_grid[k_i + 1],
                        fa=fa[s_i, k_i], fb=fb[s_i, k_i],
                        da=f_dot[s_i, k_i], db=f_dot[s_i, k_i + 1],
                        sign=np.full(s_i.size, sgn),
                    )
                )  # fmt: skip
            s_i, k_i = np.nonzero(f > 0)
            grid_tca.append((s_i, np.full(s_i.size, j), t_grid[k_i], z[s_i, k_i]))

        ext = _concat_sorted(ext_parts)
        x_ext, z_ext, f_ext = self._refine_extrema(ext)

        # hidden passes (peak above the mask between two samples below it) and
        # hidden gaps (dip below the mask between two samples above it)
        hidden_kind = np.where(self.has_mask[ext["sta"]], _FPEAK, _ZMAX)
        hidden = (
            (ext["kind"] == hidden_kind)
            & (ext["fa"] <= 0)
            & (ext["fb"] <= 0)
            & (f_ext > 0)
        )
        gap = (ext["kind"] == _FDIP) & (f_ext <= 0)
        for sel, first_sign in ((hidden, 1.0), (gap, -1.0)):
            n_sel = int(sel.sum())
            flat = np.zeros(n_sel)  # f' vanishes at the refined extremum
            a, b, fa, fb = ext["a"][sel], ext["b"][sel], ext["fa"][sel], ext["fb"][sel]
            fda, fdb, t_mid, f_mid = (
                ext["fda"][sel],
                ext["fdb"][sel],
                x_ext[sel],
                f_ext[sel],
            )
            for lo, hi, v_lo, v_hi, d_lo, d_hi, sgn in (
                (a, t_mid, fa, f_mid, fda, flat, first_sign),
                (t_mid, b, f_mid, fb, flat, fdb, -first_sign),
            ):
                cross_parts.append(
                    dict(
                        sat=ext["sat"][sel], sta=ext["sta"][sel], a=lo, b=hi,
                        fa=v_lo, fb=v_hi, da=d_lo, db=d_hi,
                        sign=np.full(n_sel, sgn),
                    )
                )  # fmt: skip
        cross = _concat_sorted(cross_parts)
        x_cross, z_cross = self._refine_crossings(cross)

        windows = self._assemble(
            cross, x_cross, z_cross, ext, x_ext, z_ext, grid_tca,
            np.array(f_first).T, np.array(f_last).T,
        )  # fmt: skip
        result.windows = self._build(windows, r, v, h)
        return result

    def _assemble(
        self, cross, x_cross, z_cross, ext, x_ext, z_ext, grid_tca, f0, f_end
    ):
        """Pair rises with sets per (satellite, station) and pick each window's TCA."""
        n_sta = len(self.stations)
        pair_c = cross["sat"] * n_sta + cross["sta"]
        s0, j0 = np.nonzero(f0 > 0)  # in view at the start
        s1, j1 = np.nonzero(f_end > 0)  # in view at the end
        ev_pair = np.concatenate([pair_c, s0 * n_sta + j0, s1 * n_sta + j1])
        ev_t = np.concatenate(
            [x_cross, np.zeros(s0.size), np.full(s1.size, self.span_s)]
        )
        ev_rise = np.concatenate(
            [cross["sign"] > 0, np.ones(s0.size, bool), np.zeros(s1.size, bool)]
        )
        order = np.lexsort((~ev_rise, ev_t, ev_pair))
        ev_pair, ev_t, ev_rise = ev_pair[order], ev_t[order], ev_rise[order]

        # A rise opens a window, the next set of the same pair closes it.
        opens = np.flatnonzero(
            ev_rise[:-1] & ~ev_rise[1:] & (ev_pair[:-1] == ev_pair[1:])
        )
        # A search that ends at an AOS (or opens at a LOS) touches the pass at
        # one instant; that is no contact, so a window must last >= 1 us.
        opens = opens[ev_t[opens + 1] - ev_t[opens] >= 1e-6]
        w_pair = ev_pair[opens]
        w_start = ev_t[opens]
        w_end = ev_t[opens + 1]
        if w_pair.size == 0:
            empty = np.empty(0)
            return dict(
                pair=w_pair, start=empty, end=empty, tca=empty, tca_z=empty,
                peaks=np.empty(0, dtype=np.int64),
            )  # fmt: skip

        # TCA candidates: refined culminations, samples in view, crossing points
        is_zmax = ext["kind"] == _ZMAX
        gs = np.concatenate([g[0] for g in grid_tca])
        gj = np.concatenate([g[1] for g in grid_tca])
        c_pair = np.concatenate(
            [ext["sat"][is_zmax] * n_sta + ext["sta"][is_zmax], gs * n_sta + gj, pair_c]
        )
        c_t = np.concatenate(
            [x_ext[is_zmax], np.concatenate([g[2] for g in grid_tca]), x_cross]
        )
        c_z = np.concatenate(
            [z_ext[is_zmax], np.concatenate([g[3] for g in grid_tca]), z_cross]
        )
        c_peak = np.concatenate(
            [np.ones(is_zmax.sum(), bool), np.zeros(gs.size + pair_c.size, bool)]
        )
        scale = self.span_s + 10.0
        w_key0 = w_pair * scale + w_start
        w_key1 = w_pair * scale + w_end
        c_key = c_pair * scale + c_t
        w_of = np.searchsorted(w_key0, c_key + 1e-6, side="right") - 1
        inside = (w_of >= 0) & (c_key <= w_key1[np.maximum(w_of, 0)] + 1e-6)
        inside &= w_pair[np.maximum(w_of, 0)] == c_pair
        w_of, c_t, c_z, c_peak = w_of[inside], c_t[inside], c_z[inside], c_peak[inside]
        best = np.lexsort((c_z, w_of))
        last = np.flatnonzero(np.diff(np.concatenate([w_of[best], [-1]])) != 0)
        tca_t = np.full(w_pair.size, np.nan)
        tca_z = np.full(w_pair.size, np.nan)
        tca_t[w_of[best][last]] = c_t[best][last]
        tca_z[w_of[best][last]] = c_z[best][last]
        peaks = np.bincount(w_of[c_peak], minlength=w_pair.size)
        missing = ~np.isfinite(tca_t)  # cannot happen: crossings are candidates
        tca_t[missing] = w_start[missing]
        tca_z[missing] = -1.0
        return dict(
            pair=w_pair, start=w_start, end=w_end, tca=tca_t, tca_z=tca_z, peaks=peaks
        )

    def _build(self, w, r, v, h) -> list[ContactWindow]:
        n_sta = len(self.stations)
        sat = w["pair"] // n_sta
        sta = w["pair"] % n_sta
        effective_s = self._effective_seconds(sat, sta, w["start"], w["end"], r, v, h)
        down = np.array([s.downlink_mbps for s in self.stations])[sta]
        up = np.array([s.uplink_mbps for s in self.stations])[sta]
        down_mb = (effective_s * down / 8.0).tolist()
        up_mb = (effective_s * up / 8.0).tolist()
        el = np.degrees(np.arcsin(np.clip(w["tca_z"], -1.0, 1.0)))
        for j in np.flatnonzero([s.refraction for s in self.stations]):
            on = sta == j
            station = self.stations[j]
            el[on] = apparent_elevation_deg(
                el[on], station.temperature_c, station.pressure_mbar
            )
        el = el.tolist()

        flags = np.where(w["start"] <= 0.0, int(WindowFlag.START_CLIPPED), 0)
        flags |= np.where(w["end"] >= self.span_s, int(WindowFlag.END_CLIPPED), 0)
        both = int(WindowFlag.START_CLIPPED | WindowFlag.END_CLIPPED)
        flags |= np.where(flags == both, int(WindowFlag.ALWAYS_VISIBLE), 0)
        flags |= np.where(w["peaks"] > 1, int(WindowFlag.MULTI_PEAK), 0)
        flag_values = [WindowFlag(f) for f in range(16)]

        start, tca, end = (
            (np.round(w[key] * 1e6)).astype(np.int64).tolist()
            for key in ("start", "tca", "end")
        )
        t0 = self.start
        us = timedelta(microseconds=1)
        names = self.ok_names
        stations = self.stations
        out = [
            ContactWindow(
                names[i], stations[j], t0 + a * us, t0 + b * us, t0 + c * us,
                e, dm, um, flag_values[f],
            )
            for i, j, a, b, c, e, dm, um, f in zip(
                sat.tolist(), sta.tolist(), start, end, tca, el, down_mb, up_mb,
                flags.tolist(), strict=True,
            )
        ]  # fmt: skip
        out.sort(key=lambda c: (c.start_time, c.satellite, c.station.name))
        return out

    def _effective_seconds(self, sat, sta, start, end, r, v, h):
        """Integral over each window of the rate fraction, in seconds.

        Midpoint rule on slices of at most CAPACITY_STEP_S; positions by cubic
        Hermite interpolation of the coarse ECEF samples.
        """
        duration = np.maximum(end - start, 0.0)
        n_pts = np.maximum(1, np.ceil(duration / CAPACITY_STEP_S).astype(np.int64))
        dt = duration / n_pts
        owner = np.repeat(np.arange(sat.size), n_pts)
        offset = np.arange(owner.size) - np.repeat(np.cumsum(n_pts) - n_pts, n_pts)
        t = start[owner] + (offset + 0.5) * dt[owner]
        n_grid = r.shape[1]
        k = np.clip((t / h).astype(np.int64), 0, n_grid - 2)
        u = (t - k * h) / h
        flat = sat[owner] * n_grid + k
        r_flat = r.reshape(-1, 3)
        v_flat = v.reshape(-1, 3)
        u2 = u * u
        u3 = u2 * u
        pos = np.take(r_flat, flat, axis=0) * (2 * u3 - 3 * u2 + 1)[:, None]
        pos += np.take(v_flat, flat, axis=0) * (h * (u3 - 2 * u2 + u))[:, None]
        pos += np.take(r_flat, flat + 1, axis=0) * (3 * u2 - 2 * u3)[:, None]
        pos += np.take(v_flat, flat + 1, axis=0) * (h * (u3 - u2))[:, None]
        site_of = sta[owner]
        rel = pos - np.take(self.site, site_of, axis=0)
        range_km = np.sqrt(np.einsum("ij,ij->i", rel, rel))
        zenith_km = np.sqrt(np.einsum("ij,ij->i", pos, pos)) - self.site_norm[site_of]
        frac = rate_fraction(range_km, zenith_km)
        return np.bincount(owner, weights=frac * dt[owner], minlength=sat.size)


def _hermite_peak(ga, gb, sa, sb):
    """Where the cubic Hermite interpolant of a bracketed maximum peaks, in [0, 1].

    ``ga``, ``gb`` are the values at the ends and ``sa`` > 0 >= ``sb`` the
    slopes scaled to the unit interval; the derivative of the cubic is a
    quadratic with exactly one root there.  Only a first guess: the bracketed
    search that follows does not rely on it.
    """
    qa = 6.0 * (ga - gb) + 3.0 * (sa + sb)
    qb = 6.0 * (gb - ga) - 4.0 * sa - 2.0 * sb
    qc = sa
    disc = np.sqrt(np.maximum(qb * qb - 4.0 * qa * qc, 0.0))
    q = -0.5 * (qb + np.where(qb >= 0, disc, -disc))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = q / qa
        r2 = qc / q
    ok1 = np.isfinite(r1) & (r1 > 0) & (r1 < 1)
    ok2 = np.isfinite(r2) & (r2 > 0) & (r2 < 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        secant = np.where(sa - sb > 0, sa / (sa - sb), 0.5)
    return np.where(ok1, r1, np.where(ok2, r2, np.clip(secant, 0.0, 1.0)))


def _hermite_root(qa, qb, sa, sb, iterations=6):
    """Zero of the cubic Hermite interpolant of ``q`` on [0, 1] (q(0) <= 0 < q(1)).

    ``sa``, ``sb`` are slopes scaled to the unit interval (NaN: unknown, use
    the secant).  Newton on the cubic, kept inside a shrinking bracket; only a
    first guess for the SGP4 refinement.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.clip(np.where(qb - qa > 0, -qa / (qb - qa), 0.5), 0.0, 1.0)
    known = np.isfinite(sa) & np.isfinite(sb)
    sa = np.where(known, sa, 0.0)
    sb = np.where(known, sb, 0.0)
    lo = np.zeros_like(s)
    hi = np.ones_like(s)
    for _ in range(iterations):
        s2 = s * s
        s3 = s2 * s
        p = (
            (2 * s3 - 3 * s2 + 1) * qa
            + (s3 - 2 * s2 + s) * sa
            + (3 * s2 - 2 * s3) * qb
            + (s3 - s2) * sb
        )
        dp = (
            (6 * s2 - 6 * s) * (qa - qb)
            + (3 * s2 - 4 * s + 1) * sa
            + (3 * s2 - 2 * s) * sb
        )
        lo = np.where(p <= 0, s, lo)
        hi = np.where(p > 0, s, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            nxt = s - p / dp
        s = np.where(np.isfinite(nxt) & (nxt > lo) & (nxt < hi), nxt, 0.5 * (lo + hi))
    return np.where(
        known, s, np.clip(np.where(qb - qa > 0, -qa / (qb - qa), 0.5), 0, 1)
    )


def _concat_sorted(parts: list[dict]) -> dict:
    """Concatenate job tables and sort them by satellite (for grouped SGP4 calls)."""
    keys = parts[0].keys() if parts else ("sat", "sta", "a", "b")
    table = {
        k: np.concatenate([p[k] for p in parts]) if parts else np.empty(0) for k in keys
    }
    order = np.argsort(table["sat"], kind="stable")
    return {k: v[order] for k, v in table.items()}
