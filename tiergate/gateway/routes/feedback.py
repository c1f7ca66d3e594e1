"""``POST /v1/feedback {"request_id", "label"}``: what the right label was for an item the gateway answered.

Acknowledged (200) only once the feedback is committed to the decision log; 404 for a request id the log
does not hold (never issued, deleted, or past retention); 422 for a label outside the label set (kept as rejected feedback beside a
known decision, so a client whose labels do not match shows up in ``tiergate feedback export``). A second
feedback for the same id replaces the first (``updates`` counts them). Feedback is what ``tiergate train
small --from-log`` learns from first, before the final tier's answers.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiergate.errors import InputError, NotFoundError
from tiergate.gateway import metrics as m
from tiergate.gateway.auth import authenticate
from tiergate.gateway.errors import invalid_body

router = APIRouter(tags=["feedback"])

# With `serve --workers N` the decision may have been answered, and queued for the log, by another worker
# whose group commit has not landed yet: look again shortly before answering 404. One process needs no second
# look: its own queue orders a decision before any feedback on it.
NOT_FOUND_RETRIES_S = (0.02, 0.05, 0.1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    request_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="The request_id of a classify answer")
    label: str = Field(min_length=1, max_length=512, description="The right label, one of the label set")


@router.post("/v1/feedback", responses={404: {"description": "No such request id in the log"},
                                        422: {"description": "A label outside the label set, or a bad body"}})
async def feedback(request: Request):
    gw = request.app.state.gateway
    sched = gw.require_scheduler()
    authenticate(request, sched.server)
    try:
        body = FeedbackRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise invalid_body(e.errors(include_url=False, include_input=False)) from None
    labels = sched.cascade.config.labels or sched.cascade.final.labels
    writer = gw.require_log()
    if body.label not in labels:
        m.FEEDBACK.labels("bad_label").inc()
        # kept beside the decision (when there is one), so a client's label mismatch can be seen and replayed
        known = await writer.reject_feedback(body.request_id, body.label, "bad_label")
        raise InputError(f"label {body.label!r} is not in the label set {labels}", labels=list(labels),
                         kept_as_rejected=known)
    for pause in (*(NOT_FOUND_RETRIES_S if gw.several_workers else ()), None):
        try:
            decided = await writer.feedback(body.request_id, body.label)
            break
        except NotFoundError:
            if pause is None:
                m.FEEDBACK.labels("unknown_id").inc()
                raise
            await asyncio.sleep(pause)
    outcome = "agreed" if decided == body.label else "corrected"
    m.FEEDBACK.labels(outcome).inc()
    return {"status": "recorded", "request_id": body.request_id, "label": body.label, "decided_label": decided,
            "outcome": outcome}
