"""A tier served by another server (``kind: remote``), over the KServe v2 protocol (:mod:`tiergate.models.kserve`).

The large model can then run on a GPU fleet behind Triton Inference Server, KServe, or another tiergate
(``tiergate serve --config C --tier NAME --protocol kserve-v2``). One batch is one request: the gateway's
batcher gathers items across requests, and each batch it runs becomes one infer call. A call that fails to
connect, or is answered 429 or 5xx, is tried again (``remote.retries``) with a short back-off inside the
call's timeout. Whatever still fails raises, and the gateway's runner turns that into a failed batch: the
circuit breaker, degraded answers and the tier's ``timeout_ms`` apply as to any tier.

The tier's labels and version come from the server's model metadata, read when the tier is built. The version
is the remote model's own: a swap on the remote side makes the certificate stale here, as a local swap would.

>>> tier = RemoteTier("large", RemoteConfig(url="http://gpu:8000", model="large"))    # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import httpx

from tiergate.config import RemoteConfig
from tiergate.data.items import Item
from tiergate.errors import ModelError
from tiergate.models import kserve
from tiergate.models.http import call_json, client_for
from tiergate.tiers import Capabilities, Tier, TierOutput


class RemoteTier(Tier):
    capabilities = Capabilities(remote=True)

    def __init__(self, name: str, cfg: RemoteConfig, client: httpx.Client | None = None):
        self.name = name
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        self.client = client or client_for(cfg, f"tier {name}")
        meta = self._call("GET", f"/v2/models/{cfg.model}")
        labels = (meta.get("parameters") or {}).get("labels") if isinstance(meta, dict) else None
        versions = meta.get("versions") if isinstance(meta, dict) else None
        if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
            raise ModelError(f"tier {name}: {self.url}/v2/models/{cfg.model} names no label set "
                             "(parameters.labels); tiergate needs one to route and calibrate")
        self.labels = list(labels)
        self._version = str(versions[0]) if isinstance(versions, list) and versions else ""
        if not self._version:
            raise ModelError(f"tier {name}: {self.url}/v2/models/{cfg.model} gives no version; certificates "
                             "bind to one")

    def version(self) -> str:
        return self._version

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        rid = uuid.uuid4().hex
        body = self._call("POST", f"/v2/models/{self.cfg.model}/infer",
                          json=kserve.request_body([it.text for it in items], rid))
        return kserve.outputs_of(body, len(items), self.labels, where=f"tier {self.name} ({self.url})")

    def _call(self, method: str, path: str, **kw) -> object:
        return call_json(self.client, method, self.url + path, retries=self.cfg.retries, timeout_s=self.cfg.timeout_s,
                         who=f"tier {self.name}", **kw)

    def close(self) -> None:
        self.client.close()
