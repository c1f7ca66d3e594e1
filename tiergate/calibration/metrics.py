"""Prometheus gauges for the cascade's certificate: what is promised (epsilon, delta), what the calibration
data supports (bound), on how many items, and whether it still describes the served cascade (stale).

Call :func:`update_certificate_metrics` at start and after every reload or model swap.

>>> update_certificate_metrics(cascade)   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt

from prometheus_client import Gauge

# Every worker of `tiergate serve --workers N` sets these from the same config, so their values are merged
# by max (prometheus-client's default for a gauge would add a pid label instead).
_MP = {"multiprocess_mode": "max"}
CERT_PRESENT = Gauge("tiergate_certificate_present", "1 when the config holds a calibration certificate", **_MP)
CERT_EPSILON = Gauge("tiergate_certificate_epsilon", "Certified risk bound epsilon (share of items)", **_MP)
CERT_DELTA = Gauge("tiergate_certificate_delta", "Allowed probability that the certified bound fails", **_MP)
CERT_BOUND = Gauge("tiergate_certificate_bound", "Upper confidence bound (1 - delta) on the chosen setting's "
                   "risk, from the calibration data", **_MP)
CERT_N = Gauge("tiergate_certificate_items", "Calibration items the certificate was tested on", **_MP)
CERT_STALE = Gauge("tiergate_certificate_stale", "1 when rules, models, thresholds or shadowed rules changed "
                   "since calibration (the certificate no longer applies)", **_MP)
CALIBRATED_SHARE = Gauge("tiergate_calibrated_share", "Share of items each tier decided on the calibration data "
                         "under the certified thresholds: what the live share per tier is compared with", ["tier"], **_MP)
CERT_CREATED = Gauge("tiergate_certificate_created_timestamp_seconds", "When the certificate was computed", **_MP)


def update_certificate_metrics(cascade) -> dict | None:
    """Set every certificate gauge from ``cascade.config.certificate``; returns the certificate's status."""
    from tiergate.calibration.ltt import certificate_status

    status = certificate_status(cascade, cascade.config.certificate)
    shares = (status or {}).get("shares_calibration") or {}
    for tc in cascade.config.tiers:
        if tc.name in shares:
            CALIBRATED_SHARE.labels(tc.name).set(float(shares[tc.name]))
        else:  # no certificate, or one from before shares were recorded: no expected share to compare with
            try:
                CALIBRATED_SHARE.remove(tc.name)
            except KeyError:
                pass
    if status is None:
        CERT_PRESENT.set(0)
        for g in (CERT_EPSILON, CERT_DELTA, CERT_BOUND, CERT_N, CERT_CREATED):
            g.set(0)
        CERT_STALE.set(0)
        return None
    CERT_PRESENT.set(1)
    CERT_EPSILON.set(float(status.get("epsilon", 0.0)))
    CERT_DELTA.set(float(status.get("delta", 0.0)))
    CERT_BOUND.set(float(status.get("bound", 0.0)))
    CERT_N.set(float(status.get("n", 0)))
    CERT_STALE.set(1 if status["stale"] else 0)
    try:
        CERT_CREATED.set(_dt.datetime.fromisoformat(str(status.get("created"))).timestamp())
    except ValueError:
        CERT_CREATED.set(0)
    return status
