"""A final tier that asks an OpenAI-compatible chat endpoint (``kind: remote``, ``protocol: openai``).

Each item becomes one chat completion: the prompt (``remote.prompt``, with ``{labels}`` and ``{text}`` filled in)
at temperature 0. The answer is parsed strictly into the label set: exactly one label, ignoring case,
surrounding space, quotes and a final full stop. Anything else fails the batch (a ModelError), and the
gateway's runner treats that as any failed batch: the breaker, degraded answers from the cheaper tiers. A guess
is never recorded as the final tier's answer. Calls of one batch run ``remote.concurrency`` at a time; a
connection error, 429 or 5xx is retried within the timeout.

Cost: the tier counts the tokens each call reports (``usage``) at ``remote.usd_per_input_token`` and
``usd_per_output_token``. ``usd_per_item`` is their running mean, which ``tiergate calibrate`` writes into the
tier's ``cost.fixed_usd_per_call``, since a chat call is priced per token, not per second of our hardware.

>>> tier = ChatTier("llm", RemoteConfig(protocol="openai", url="http://llm:8000/v1", model="m", labels=["ham", "spam"]))  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import re
from collections.abc import Sequence

import httpx

from tiergate.config import RemoteConfig
from tiergate.data.items import Item
from tiergate.errors import ModelError
from tiergate.models.http import call_json, client_for
from tiergate.tiers import Capabilities, Tier, TierOutput


class ChatTier(Tier):
    capabilities = Capabilities(remote=True)

    def __init__(self, name: str, cfg: RemoteConfig, client: httpx.Client | None = None):
        self.name = name
        self.cfg = cfg
        self.labels = list(cfg.labels)
        if not self.labels:
            raise ModelError(f"tier {name}: an openai tier needs its label set (remote.labels or the config's labels)")
        self.client = client or client_for(cfg, f"tier {name}")
        self.url = cfg.url.rstrip("/") + "/chat/completions"
        self._by_key = {self._key(lab): lab for lab in self.labels}
        self._spent = 0.0
        self._calls = 0

    def version(self) -> str:
        """The model name and the prompt: changing either changes what the final tier answers."""
        digest = hashlib.sha256(f"{self.cfg.url}|{self.cfg.model}|{self.cfg.prompt}".encode()).hexdigest()[:12]
        return f"{self.cfg.model}@{digest}"

    @property
    def usd_per_item(self) -> float | None:
        return self._spent / self._calls if self._calls else None

    @staticmethod
    def _key(s: str) -> str:
        return re.sub(r"\s+", " ", s.strip().strip("\"'`").rstrip(".").strip()).lower()

    def parse(self, answer: str) -> str:
        label = self._by_key.get(self._key(answer))
        if label is None:
            raise ModelError(f"tier {self.name}: the chat model answered {answer[:80]!r}, not one of {self.labels}")
        return label

    def predict(self, items: Sequence[Item]) -> list[TierOutput]:
        if not items:
            return []
        with cf.ThreadPoolExecutor(min(self.cfg.concurrency, len(items))) as ex:
            labels = list(ex.map(self._ask, items))
        return [TierOutput(label=lab, confidence=1.0, probabilities={x: float(x == lab) for x in self.labels},
                           reason="chat") for lab in labels]

    def _ask(self, item: Item) -> str:
        prompt = self.cfg.prompt.format(labels=", ".join(self.labels), text=item.text[: self.cfg.max_text_chars])
        body = {"model": self.cfg.model, "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "user", "content": prompt}]}
        reply = self._post(body)
        try:
            answer = reply["choices"][0]["message"]["content"]
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError) as e:
            raise ModelError(f"tier {self.name}: not a chat completion: {str(reply)[:200]}") from e
        if not isinstance(answer, str):
            raise ModelError(f"tier {self.name}: the chat completion has no text content")
        cost = (float(usage.get("prompt_tokens", 0)) * self.cfg.usd_per_input_token
                + float(usage.get("completion_tokens", 0)) * self.cfg.usd_per_output_token)
        self._spent += cost
        self._calls += 1
        return self.parse(answer)

    def _post(self, body: dict) -> dict:
        reply = call_json(self.client, "POST", self.url, retries=self.cfg.retries, timeout_s=self.cfg.timeout_s,
                          who=f"tier {self.name}", json=body)
        if not isinstance(reply, dict):
            raise ModelError(f"tier {self.name}: not a chat completion: {str(reply)[:200]}")
        return reply

    def close(self) -> None:
        self.client.close()
