"""The KServe v2 / Open Inference Protocol, as tiergate speaks it for a classification tier (REST, JSON).

One request carries a batch of texts; the answer carries, per item, the label ("" for an abstention), the
confidence, the class probabilities when the tier has them, the reason and a forced escalation:

    POST /v2/models/{name}/infer
    {"id": "...", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [N], "data": ["...", ...]}]}
    -> {"model_name": name, "model_version": "...", "id": "...",
        "parameters": {"labels": [...]},
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [N], "data": [...]},
                    {"name": "confidence", "datatype": "FP32", "shape": [N], "data": [...]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [N, C], "data": [row-major]},
                    {"name": "reason", "datatype": "BYTES", "shape": [N], "data": [...]},
                    {"name": "escalate_to", "datatype": "BYTES", "shape": [N], "data": [...]}]}

``GET /v2/health/ready`` and ``GET /v2/models/{name}`` (metadata: versions, inputs, outputs, labels) complete
it. Parsing is strict: a malformed answer is a :class:`~tiergate.errors.ModelError`, never a silent guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tiergate.errors import InputError, ModelError
from tiergate.tiers import TierOutput

TEXT_INPUT = "text"


def request_body(texts: Sequence[str], request_id: str = "") -> dict:
    return {"id": request_id, "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [len(texts)],
                                           "data": list(texts)}]}


def texts_of(body: object) -> list[str]:
    """The texts of an infer request (InputError, with what is wrong, for anything else)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise InputError("an infer request is a JSON object with an 'inputs' list")
    for inp in body["inputs"]:
        if isinstance(inp, dict) and inp.get("name") == TEXT_INPUT:
            data = inp.get("data")
            if inp.get("datatype") != "BYTES" or not isinstance(data, list) or not all(isinstance(t, str) for t in data):
                raise InputError(f"input {TEXT_INPUT!r} must be BYTES with a list of strings as data")
            if inp.get("shape") not in (None, [len(data)]):
                raise InputError(f"input {TEXT_INPUT!r}: shape {inp.get('shape')} does not match {len(data)} items")
            return data
    raise InputError(f"no input named {TEXT_INPUT!r} (the texts to classify)")


def response_body(model: str, version: str, labels: Sequence[str], outputs: Sequence[TierOutput],
                  request_id: str = "") -> dict:
    n = len(outputs)
    out = [{"name": "label", "datatype": "BYTES", "shape": [n], "data": [o.label or "" for o in outputs]},
           {"name": "confidence", "datatype": "FP32", "shape": [n], "data": [float(o.confidence) for o in outputs]},
           {"name": "reason", "datatype": "BYTES", "shape": [n], "data": [o.reason for o in outputs]},
           {"name": "escalate_to", "datatype": "BYTES", "shape": [n], "data": [o.escalate_to or "" for o in outputs]}]
    if labels and outputs and all(o.probabilities is not None for o in outputs):
        flat = [float((o.probabilities or {}).get(lab, 0.0)) for o in outputs for lab in labels]
        out.insert(2, {"name": "probabilities", "datatype": "FP32", "shape": [n, len(labels)], "data": flat})
    return {"model_name": model, "model_version": version, "id": request_id, "parameters": {"labels": list(labels)},
            "outputs": out}


def outputs_of(body: object, n: int, labels: Sequence[str], where: str) -> list[TierOutput]:
    """Strictly read ``n`` outputs from an infer response; ModelError naming ``where`` on anything off."""
    def bad(why: str) -> ModelError:
        return ModelError(f"{where}: not a usable KServe v2 answer: {why}")

    if not isinstance(body, dict) or not isinstance(body.get("outputs"), list):
        raise bad("no 'outputs' list")
    by_name = {o.get("name"): o for o in body["outputs"] if isinstance(o, dict)}
    for need in ("label", "confidence"):
        if need not in by_name:
            raise bad(f"no output {need!r}")

    def column(name: str, kind: type) -> list:
        data = by_name[name].get("data")
        if not isinstance(data, list) or len(data) != n or not all(isinstance(v, kind) for v in data):
            raise bad(f"output {name!r} must hold {n} values of type {kind.__name__}")
        return data

    label = column("label", str)
    confidence = [float(v) for v in column("confidence", (int, float))]  # type: ignore[arg-type]
    if not all(math.isfinite(c) for c in confidence):
        raise bad("a confidence is not finite")
    reason = column("reason", str) if "reason" in by_name else [""] * n
    escalate = column("escalate_to", str) if "escalate_to" in by_name else [""] * n
    proba: list[dict[str, float] | None] = [None] * n
    if "probabilities" in by_name:
        p = by_name["probabilities"]
        flat = p.get("data")
        if p.get("shape") != [n, len(labels)] or not isinstance(flat, list) or len(flat) != n * len(labels):
            raise bad(f"output 'probabilities' must have shape [{n}, {len(labels)}]")
        proba = [{lab: float(flat[i * len(labels) + j]) for j, lab in enumerate(labels)} for i in range(n)]
    outs = []
    for i in range(n):
        if label[i] and labels and label[i] not in labels:
            raise bad(f"label {label[i]!r} is not in the label set {list(labels)}")
        outs.append(TierOutput(label=label[i] or None, confidence=confidence[i], probabilities=proba[i],
                               reason=reason[i], escalate_to=escalate[i] or None))
    return outs


def metadata_body(model: str, version: str, labels: Sequence[str], platform: str) -> dict:
    return {"name": model, "versions": [version], "platform": platform,
            "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                        {"name": "confidence", "datatype": "FP32", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
                        {"name": "reason", "datatype": "BYTES", "shape": [-1]},
                        {"name": "escalate_to", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"labels": list(labels)}}
