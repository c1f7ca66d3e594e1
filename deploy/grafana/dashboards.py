"""tiergate's Grafana dashboards, as code (Grafana's own grafana-foundation-sdk), written to JSON beside this file.

    python deploy/grafana/dashboards.py          # regenerate deploy/grafana/dashboards/*.json
    python deploy/grafana/dashboards.py --check  # exit 1 if the checked-in JSON differs from what this makes

The JSON is checked in (Grafana provisioning reads it: deploy/grafana/provisioning/) and a test keeps it equal to
what this script makes. Grafana itself is not packaged for the machines tiergate is built on; the dashboards'
validity rests on the tests that run every panel's query against a real Prometheus scraping a real gateway
(tests/deploy/test_prometheus.py), and on Grafana's schema, which the SDK builds to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# The savings formula used everywhere: the all-to-final-tier baseline, less what the cascade spent, less what
# the shadow audits spent (they are paid to watch the guarantee, so they count against the savings).
SAVED_RATE = (f"(sum(rate(tiergate_baseline_cost_usd_total[{RATE}])) - sum(rate(tiergate_cost_usd_total[{RATE}]))"
              f" - sum(rate(tiergate_shadow_cost_usd_total[{RATE}])))")
SHARE = (f"sum by (tier) (rate(tiergate_decisions_total[{RATE}])) / ignoring(tier) group_left() "
         f"sum(rate(tiergate_decisions_total[{RATE}]))")


def q(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    return query.legend_format(legend) if legend else query


def quantiles(histogram: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.99)) -> list[prometheus.Dataquery]:
    """p50 and p99 (by default) of a histogram, per ``by`` label if given."""
    group = f"{by}, le" if by else "le"
    prefix = f"{{{{{by}}}}} " if by else ""
    return [q(f"histogram_quantile({x}, sum by ({group}) (rate({histogram}_bucket[{RATE}])))",
              f"{prefix}p{round(100 * x)}") for x in qs]


def series(title: str, description: str, queries: list[prometheus.Dataquery], unit: str, *, w: int = 12,
           h: int = 8, stack: bool = False, minimum: float | None = 0) -> timeseries.Panel:
    p = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(w)
         .height(h).fill_opacity(10).legend(cb.VizLegendOptions().show_legend(True)
                                            .display_mode(cm.LegendDisplayMode.TABLE)
                                            .placement(cm.LegendPlacement.BOTTOM).calcs(["mean", "max", "lastNotNull"])))
    if minimum is not None:
        p = p.min(minimum)
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    for i, query in enumerate(queries):
        p = p.with_target(query.ref_id(chr(ord("A") + i)))
    return p


def big(title: str, description: str, expr: str, unit: str, *, w: int = 6, decimals: int = 2) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(w).height(4)
            .decimals(decimals).graph_mode(cm.BigValueGraphMode.AREA).with_target(q(expr)))


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(description).tags(["tiergate"]).refresh("30s")
            .time("now-6h", "now").timezone("browser").editable()
            .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))


def cost_dashboard() -> db.Dashboard:
    d = base("tiergate-cost", "tiergate: cost saved", "What the cascade saves against sending every item to the "
             "final tier, and where the money goes. Savings are net of the shadow audits' cost.")
    d = d.with_row(db.Row("Money"))
    d = d.with_panel(big("Saved in the range", "Baseline (all to the final tier) minus what the cascade and its "
                         "shadow audits cost, over the dashboard's time range.",
                         "sum(increase(tiergate_baseline_cost_usd_total[$__range])) - "
                         "sum(increase(tiergate_cost_usd_total[$__range])) - "
                         "sum(increase(tiergate_shadow_cost_usd_total[$__range]))", "currencyUSD", decimals=4))
    d = d.with_panel(big("Saved since start (gateway's total)", "tiergate_cost_saved_usd, summed over instances: "
                         "the running total each gateway keeps since it started.",
                         "sum(tiergate_cost_saved_usd)", "currencyUSD", decimals=4))
    d = d.with_panel(big("Share of the baseline saved", "Savings as a share of the all-to-final-tier cost, now.",
                         f"{SAVED_RATE} / sum(rate(tiergate_baseline_cost_usd_total[{RATE}]))", "percentunit"))
    d = d.with_panel(big("Savings target", "metrics.savings_target in the config: the alert "
                         "TiergateSavingsBelowTarget fires below it.", "max(tiergate_savings_target_ratio)",
                         "percentunit"))
    d = d.with_panel(series("Money saved per hour", "USD per hour saved against all-to-final-tier, net of audits.",
                            [q(f"3600 * {SAVED_RATE}", "saved per hour"),
                             q(f"3600 * sum(rate(tiergate_shadow_cost_usd_total[{RATE}]))", "spent on shadow audits")],
                            "currencyUSD"))
    d = d.with_panel(series("Cost per 1k items", "What 1,000 items cost through the cascade, against sending them "
                            "all to the final tier.",
                            [q(f"1000 * sum(rate(tiergate_cost_usd_total[{RATE}])) / "
                               f"sum(rate(tiergate_decisions_total[{RATE}]))", "cascade"),
                             q(f"1000 * sum(rate(tiergate_baseline_cost_usd_total[{RATE}])) / "
                               f"sum(rate(tiergate_decisions_total[{RATE}]))", "all to the final tier")],
                            "currencyUSD"))
    d = d.with_row(db.Row("Where items go"))
    d = d.with_panel(series("Share of items decided per tier, against the calibrated share",
                            "Live share per tier (solid) and the share each tier decided on the calibration data "
                            "(tiergate_calibrated_share). Drift beyond the binomial interval fires "
                            "TiergateEscalationShareDrift.",
                            [q(SHARE, "{{tier}} live"), q("max by (tier) (tiergate_calibrated_share)",
                                                          "{{tier}} calibrated")], "percentunit"))
    d = d.with_panel(series("Cost per hour by tier", "Spent per tier, escalated and failed attempts included.",
                            [q(f"3600 * sum by (tier) (rate(tiergate_cost_usd_total[{RATE}]))", "{{tier}}")],
                            "currencyUSD", stack=True))
    d = d.with_panel(series("Escalations by reason", "Items passed on from a tier: low_confidence, rule, error, "
                            "timeout, breaker_open, deadline, override (final_only).",
                            [q(f"sum by (tier, reason) (rate(tiergate_escalation_reasons_total[{RATE}]))",
                               "{{tier}}: {{reason}}")], "reqps", stack=True))
    d = d.with_panel(series("Decisions per second by tier", "Items decided, per deciding tier.",
                            [q(f"sum by (tier) (rate(tiergate_decisions_total[{RATE}]))", "{{tier}}")], "reqps",
                            stack=True))
    return d


def serving_dashboard() -> db.Dashboard:
    d = base("tiergate-serving", "tiergate: serving and the guarantee", "Latency, batching, queues, degraded "
             "answers, the live guarantee from shadow audits, rules and reloads.")
    d = d.with_row(db.Row("The guarantee"))
    d = d.with_panel(series("Live risk from shadow audits, against epsilon",
                            "The cascade's disagreement with the final tier measured by shadow audits, with its "
                            "Clopper-Pearson bounds, and the certificate's epsilon. Upper bound above epsilon with "
                            "enough audits: TiergateGuaranteeAtRisk; lower bound above it: TiergateGuaranteeViolated.",
                            [q("max(tiergate_shadow_risk_ratio)", "live risk"),
                             q("max(tiergate_shadow_risk_upper_bound)", "upper bound"),
                             q("max(tiergate_shadow_risk_lower_bound)", "lower bound"),
                             q("max(tiergate_certificate_epsilon)", "epsilon (certified)")], "percentunit"))
    d = d.with_panel(series("Shadow agreement per tier", "Audits per second, agreeing or not, and each tier's "
                            "upper bound on its disagreement.",
                            [q(f"sum by (tier, agreed) (rate(tiergate_shadow_audits_total[{RATE}]))",
                               "{{tier}} agreed={{agreed}}"),
                             q(f"sum(rate(tiergate_shadow_dropped_total[{RATE}]))", "dropped")], "reqps"))
    d = d.with_panel(big("Certificate stale", "1: rules, models or thresholds changed since calibration.",
                         "max(tiergate_certificate_stale)", "bool", w=6, decimals=0))
    d = d.with_panel(big("Shadow audits (total)", "Audits made since the gateways started.",
                         "sum(tiergate_shadow_audits_total)", "short", w=6, decimals=0))
    d = d.with_panel(big("Audits needed for epsilon", "Agreeing audits needed before the upper bound can reach "
                         "epsilon at all.", "max(tiergate_shadow_audits_needed)", "short", w=6, decimals=0))
    d = d.with_panel(big("Degraded answers (range)", "Answers from a cheaper tier because the final one could not.",
                         "sum(increase(tiergate_degraded_total[$__range]))", "short", w=6, decimals=0))
    d = d.with_row(db.Row("Latency and load"))
    d = d.with_panel(series("Request latency", "End-to-end classify latency.",
                            quantiles("tiergate_request_latency_seconds"), "s"))
    d = d.with_panel(series("Latency per tier", "Wall time of each tier's batches.",
                            quantiles("tiergate_tier_latency_seconds", by="tier"), "s"))
    d = d.with_panel(series("Gateway overhead", "A request's time in the gateway outside tier compute.",
                            quantiles("tiergate_overhead_seconds"), "s"))
    d = d.with_panel(series("Mean batch size per tier", "Items per batch, gathered across requests.",
                            [q(f"sum by (tier) (rate(tiergate_batch_size_sum[{RATE}])) / "
                               f"sum by (tier) (rate(tiergate_batch_size_count[{RATE}]))", "{{tier}}")], "short"))
    d = d.with_panel(series("Queue wait p99 per tier", "Time items waited in a tier's queue before their batch ran.",
                            [q("histogram_quantile(0.99, sum by (tier, le) (rate(tiergate_queue_wait_seconds_bucket"
                               f"[{RATE}])))", "{{tier}}")], "s"))
    d = d.with_panel(series("Requests by outcome", "ok, bad_request, unauthorized, overloaded (429), error, "
                            "unavailable.", [q(f"sum by (outcome) (rate(tiergate_requests_total[{RATE}]))",
                                               "{{outcome}}")], "reqps", stack=True))
    d = d.with_panel(series("Degraded answers by reason", "error, timeout, breaker_open, deadline.",
                            [q(f"sum by (reason) (rate(tiergate_degraded_total[{RATE}]))", "{{reason}}")], "reqps",
                            stack=True))
    d = d.with_panel(series("Queued items per tier", "Items waiting or running per tier.",
                            [q("sum by (tier) (tiergate_queue_items)", "{{tier}}")], "short"))
    d = d.with_row(db.Row("Rules and reloads"))
    d = d.with_panel(table.Panel().title("Top rule hits").description("The ten rules that acted most over the range.")
                     .datasource(DATASOURCE).span(12).height(8)
                     .with_target(q("topk(10, sum by (rule) (increase(tiergate_rules_hits_total[$__range])))", "{{rule}}")
                                  .instant().format(pm.PromQueryFormat.TABLE)))
    d = d.with_panel(series("Reloads", "Model hot swaps by outcome, and rejected rule-set loads.",
                            [q("sum by (outcome) (increase(tiergate_model_reloads_total[$__range]))", "models {{outcome}}"),
                             q("sum(increase(tiergate_rules_reload_failures_total[$__range]))", "rules rejected")],
                            "short"))
    return d


DASHBOARDS = {"tiergate-cost.json": cost_dashboard, "tiergate-serving.json": serving_dashboard}


def render() -> dict[str, str]:
    out = {}
    for name, make in DASHBOARDS.items():
        doc = json.loads(json.dumps(make().build(), cls=JSONEncoder))
        for i, panel in enumerate(doc["panels"], 1):  # Grafana keys panels by id: unique, stable
            panel["id"] = i
        out[name] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the checked-in JSON instead of writing")
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    differ = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                differ.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if differ:
        print(f"out of date (run python deploy/grafana/dashboards.py): {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
