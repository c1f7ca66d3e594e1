"""``GET /status``: a page for people without Grafana. Money saved, the tier mix against the calibrated mix,
latency, recent escalations, the live guarantee, the certificate and the rule-set version, with plots drawn
from the gateway's own recent metrics (:mod:`tiergate.gateway.history`) as inline SVG: no script, no external
asset, so it renders anywhere, offline included.

The figures come from the same Prometheus registry that ``/metrics`` serves, so the page and the dashboards
cannot disagree.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from collections.abc import Sequence

from tiergate.gateway.history import History, Sample, quantile

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 200, 64, 12, 28, 34

Series = tuple[str, Sequence[tuple[float, float]], str, bool]   # name, points (t, value), colour, dashed


def _fmt(v: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * v:.1f}%"
    if unit == "USD":
        sign = "-" if v < 0 else ""
        return f"{sign}${abs(v):.2g}" if abs(v) < 0.01 else f"{sign}${abs(v):,.2f}"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.3g}"


def svg_chart(title: str, series: Sequence[Series], unit: str = "", *, y_min: float | None = None,
              y_max: float | None = None) -> str:
    """One line chart as an SVG element: axes, the range of the values, a legend, a line per series."""
    pts = [p for _, ps, _, _ in series for p in ps if math.isfinite(p[1])]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff" stroke="#ddd"/>',
           f'<text x="{PAD_L}" y="18" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    x0, x1, y0, y1 = PAD_L, W - PAD_R, H - PAD_B, PAD_T
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/>'
               f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#999"/>')
    if len({p[0] for p in pts}) < 2:
        out.append(f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle" fill="#888" font-size="12">'
                   'waiting for traffic (a point every few seconds)</text></svg>')
        return "".join(out)
    t_lo, t_hi = min(p[0] for p in pts), max(p[0] for p in pts)
    lo = min(p[1] for p in pts) if y_min is None else y_min
    hi = max(p[1] for p in pts) if y_max is None else y_max
    lo, hi = min(lo, min(p[1] for p in pts)), max(hi, max(p[1] for p in pts))
    if hi - lo < 1e-12:
        hi = lo + (abs(lo) or 1.0)

    def xy(t: float, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * (t - t_lo) / (t_hi - t_lo), y0 - (y0 - y1) * (v - lo) / (hi - lo)

    for v in (lo, (lo + hi) / 2, hi):
        _, y = xy(t_lo, v)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_fmt(v, unit)}</text>')
    span = t_hi - t_lo
    out.append(f'<text x="{x0}" y="{H - 18}" font-size="10">-{span / 60:.0f} min</text>'
               f'<text x="{x1}" y="{H - 18}" text-anchor="end" font-size="10">now</text>')
    lx = x0
    for name, ps, color, dashed in series:
        good = [p for p in ps if math.isfinite(p[1])]
        if len(good) >= 2:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(t, v) for t, v in good))
            dash = ' stroke-dasharray="5,4"' if dashed else ""
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{path}"/>')
        out.append(f'<rect x="{lx}" y="{H - 11}" width="10" height="3" fill="{color}"/>'
                   f'<text x="{lx + 13}" y="{H - 6}" font-size="10">{html.escape(name)}</text>')
        lx += 13 + 6 * len(name) + 14
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------------ the plots
def saved_series(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    if not samples:
        return []
    s0 = samples[0]
    return [(s.t, (s.baseline - s0.baseline) - (s.cost - s0.cost) - (s.shadow - s0.shadow)) for s in samples]


def share_series(samples: Sequence[Sample], tiers: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {t: [] for t in tiers}
    for a, b in zip(samples, samples[1:], strict=False):
        total = sum(b.decided.get(t, 0) - a.decided.get(t, 0) for t in tiers)
        if total <= 0:
            continue
        for t in tiers:
            out[t].append((b.t, (b.decided.get(t, 0) - a.decided.get(t, 0)) / total))
    return out


def latency_series(samples: Sequence[Sample], q: float) -> list[tuple[float, float]]:
    out = []
    for a, b in zip(samples, samples[1:], strict=False):
        diff = {le: b.latency.get(le, 0) - a.latency.get(le, 0) for le in b.latency}
        v = quantile(diff, q)
        if v is not None:
            out.append((b.t, v))
    return out


def _when(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%H:%M:%S")


def render_status(cascade, certificate: dict | None, rules_version: str | None, live: dict | None = None,
                  history: History | None = None) -> str:
    cfg = cascade.config
    names = [tc.name for tc in cfg.tiers]
    samples = history.with_now() if history is not None else []
    last = samples[-1] if samples else Sample(0)
    total = sum(last.decided.values())
    calibrated = (certificate or {}).get("shares_calibration") or {}
    rows = []
    for tier, tc in zip(cascade.tiers, cfg.tiers, strict=True):
        n = last.decided.get(tc.name, 0.0)
        share = f"{100 * n / total:.1f}%" if total else "-"
        cal = f"{100 * calibrated[tc.name]:.1f}%" if tc.name in calibrated else "-"
        per_class = ", ".join(f"{k}: {v:.4f}" for k, v in tc.threshold.per_class.items())
        rows.append(
            f"<tr><td>{html.escape(tc.name)}</td><td>{tc.kind}</td><td><code>{html.escape(tier.version())}</code></td>"
            f"<td>{tc.threshold.default:.4f}{' (' + html.escape(per_class) + ')' if per_class else ''}</td>"
            f"<td>{tc.cost.usd_per_item * 1000:.6f}</td><td>{int(n)}</td><td>{share}</td><td>{cal}</td></tr>")
    saved = last.baseline - last.cost - last.shadow
    pct = f"{100 * saved / last.baseline:.1f}%" if last.baseline else "-"
    hour = [s for s in samples if s.t >= last.t - 3600]
    saved_hour = saved_series(hour)[-1][1] if len(hour) >= 2 else 0.0

    shares = share_series(samples, names)
    mix = [(f"{t}", shares[t], COLORS[i % len(COLORS)], False) for i, t in enumerate(names)]
    if samples:
        mix += [(f"{t} calibrated", [(samples[0].t, calibrated[t]), (last.t, calibrated[t])],
                 COLORS[i % len(COLORS)], True) for i, t in enumerate(names) if t in calibrated]
    charts = [
        svg_chart("Money saved since start (net of shadow audits)", [("USD saved", saved_series(samples), COLORS[2], False)],
                  "USD"),
        svg_chart("Share of decisions per tier (dashed: calibrated)", mix, "%", y_min=0, y_max=1),
        svg_chart("Request latency", [("p50", latency_series(samples, 0.5), COLORS[0], False),
                                      ("p99", latency_series(samples, 0.99), COLORS[3], False)], "s", y_min=0),
    ]
    esc = "".join(
        f"<tr><td>{_when(e['t'])}</td><td>{html.escape(' → '.join(e['path']))}</td><td>{html.escape(e['label'])}</td>"
        f"<td>{e['confidence']:.3f}</td><td>{html.escape(e['degraded'] or '-')}</td></tr>"
        for e in list(reversed(history.escalations if history is not None else []))[:10])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tiergate status</title>
<meta http-equiv="refresh" content="15">
<style>body{{font-family:sans-serif;margin:2em;color:#222}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}
.big{{font-size:28px;font-weight:bold}}.cards{{display:flex;gap:2em;margin:1em 0}}.charts{{display:flex;flex-wrap:wrap;gap:12px}}
.ok{{color:#2ca02c}}.bad{{color:#d62728}}</style>
</head><body><h1>tiergate</h1>
<div class="cards">
<div><div class="big">{_fmt(saved, "USD")}</div>saved since start ({pct} of the all-to-final-tier cost)</div>
<div><div class="big">{_fmt(saved_hour, "USD")}</div>saved in the last hour</div>
<div><div class="big">{int(total)}</div>decisions since start</div>
</div>
<div class="charts">{''.join(charts)}</div>
<h2>Tiers</h2>
<table><tr><th>tier</th><th>kind</th><th>version</th><th>threshold</th><th>USD / 1k items</th><th>decided</th><th>share</th><th>calibrated share</th></tr>
{''.join(rows)}</table>
<h2>The guarantee</h2>
<p>certificate: {_certificate(certificate)}</p>
<p>live guarantee (shadow audits): {_live(live)}</p>
<p>rules version: <code>{html.escape(rules_version or "-")}</code></p>
<h2>Recent escalations</h2>
<table><tr><th>time (UTC)</th><th>path</th><th>label</th><th>confidence</th><th>degraded</th></tr>{esc or '<tr><td colspan="5">none yet</td></tr>'}</table>
<p><a href="/metrics">metrics</a> &middot; <a href="/readyz">readyz</a> &middot; <a href="/docs">API</a></p>
</body></html>"""


def _certificate(certificate: dict | None) -> str:
    if not certificate:
        return "none: thresholds carry no guarantee (run <code>tiergate calibrate</code>)"
    if certificate.get("stale"):
        state = '<b class="bad">STALE</b>: ' + html.escape("; ".join(certificate.get("stale_reasons", [])))
    else:
        state = '<b class="ok">valid</b>'
    return (f"P(risk &le; {certificate.get('epsilon')}) &ge; 1 &minus; {certificate.get('delta')} on "
            f"n = {certificate.get('n')} calibration items (bound {certificate.get('bound')}, risk "
            f"{html.escape(str(certificate.get('risk')))}): {state}")


def _live(live: dict | None) -> str:
    if not live:
        return "-"
    if not live.get("audits"):
        return f"no audits yet (share {live.get('share', 0):g} of cheaply decided items)"
    eps = live.get("epsilon")
    against = f" against epsilon {eps}" if eps is not None else ""
    css = {"holds": "ok", "violated": "bad"}.get(live["verdict"], "")
    return (f"risk {live['risk']:.4f}, upper bound {live['upper_bound']:.4f}{against} from {live['audits']} audits "
            f"of {live['decisions']} decisions: <b class=\"{css}\">{html.escape(live['verdict'])}</b>")
