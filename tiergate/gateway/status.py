"""A human-readable status page (``GET /status``): tiers, thresholds, costs, live decision counts, cost saved
and whether the calibration certificate still applies. Read from the same Prometheus registry the metrics
endpoint serves, so the page and the dashboards cannot disagree."""

from __future__ import annotations

import html

from prometheus_client import REGISTRY


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def render_status(cascade, certificate: dict | None, rules_version: str | None, live: dict | None = None) -> str:
    cfg = cascade.config
    labels = cfg.labels or cascade.final.labels
    rows = []
    total = sum(_sample("tiergate_decisions_total", {"tier": tc.name, "label": lab})
                for tc in cfg.tiers for lab in labels)
    for tier, tc in zip(cascade.tiers, cfg.tiers, strict=True):
        n = sum(_sample("tiergate_decisions_total", {"tier": tc.name, "label": lab}) for lab in labels)
        share = f"{100 * n / total:.1f}%" if total else "-"
        per_class = ", ".join(f"{k}: {v:.4f}" for k, v in tc.threshold.per_class.items())
        rows.append(
            f"<tr><td>{html.escape(tc.name)}</td><td>{tc.kind}</td><td>{html.escape(tier.version())}</td>"
            f"<td>{tc.threshold.default:.4f}{' (' + html.escape(per_class) + ')' if per_class else ''}</td>"
            f"<td>{tc.cost.usd_per_item * 1000:.6f}</td><td>{int(n)}</td><td>{share}</td></tr>")
    baseline = _sample("tiergate_baseline_cost_usd_total")
    saved = _sample("tiergate_cost_saved_usd")
    if certificate:
        state = "STALE: " + html.escape("; ".join(certificate.get("stale_reasons", []))) if certificate.get("stale") else "valid"
        cert = (f"P(risk &le; {certificate.get('epsilon')}) &ge; 1 &minus; {certificate.get('delta')} on "
                f"n = {certificate.get('n')} calibration items (bound {certificate.get('bound')}, risk "
                f"{html.escape(str(certificate.get('risk')))}): <b>{state}</b>")
    else:
        cert = "none: thresholds carry no guarantee (run <code>tiergate calibrate</code>)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tiergate status</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}</style>
</head><body><h1>tiergate</h1>
<p>rules version: <code>{html.escape(rules_version or "-")}</code></p>
<table><tr><th>tier</th><th>kind</th><th>version</th><th>threshold</th><th>USD / 1k items</th><th>decided</th><th>share</th></tr>
{''.join(rows)}</table>
<p>cost saved against all-to-final-tier: {saved:.6f} USD of {baseline:.6f} USD
({(100 * saved / baseline) if baseline else 0:.1f}%)</p>
<p>certificate: {cert}</p>
<p>live guarantee (shadow audits): {_live(live)}</p>
<p><a href="/metrics">metrics</a> &middot; <a href="/readyz">readyz</a> &middot; <a href="/docs">API</a></p>
</body></html>"""


def _live(live: dict | None) -> str:
    if not live:
        return "-"
    if not live.get("audits"):
        return f"no audits yet (share {live.get('share', 0):g} of cheaply decided items)"
    eps = live.get("epsilon")
    against = f" against epsilon {eps}" if eps is not None else ""
    return (f"risk {live['risk']:.4f}, upper bound {live['upper_bound']:.4f}{against} from {live['audits']} audits "
            f"of {live['decisions']} decisions: <b>{html.escape(live['verdict'])}</b>")
