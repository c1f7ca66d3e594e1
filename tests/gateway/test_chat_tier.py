"""An OpenAI-compatible chat endpoint as the final tier, against a small fake server on loopback: answers parsed
strictly into the label set, priced by the tokens used, failures degraded like any tier's."""

from __future__ import annotations

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request

from tests.conftest import running_server
from tests.gateway.conftest import HAM, LOTTERY, write_config
from tiergate.config import RemoteConfig, load_config
from tiergate.errors import ConfigError, ModelError
from tiergate.gateway.app import create_app
from tiergate.models.chat import ChatTier
from tiergate.pipeline import calibrate


def fake_llm(answers: dict) -> FastAPI:
    """spam if the text mentions a lottery or money, else ham; ``answers['style']`` spells it."""
    app = FastAPI()
    seen: list[dict] = []
    app.state.seen = seen

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        text = body["messages"][0]["content"].split("Text:", 1)[-1].lower()
        label = "spam" if ("lottery" in text or "money" in text) else "ham"
        content = {"plain": label, "loose": f' "{label.upper()}." ', "chatty": f"I think it is {label}"}[answers["style"]]
        return {"choices": [{"message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": len(body["messages"][0]["content"]) // 4, "completion_tokens": 2}}

    return app


def chat_config(d, tiny_workdir, url: str, name: str):
    path = write_config(d, tiny_workdir, name, final_threshold_small=0.99)
    raw = yaml.safe_load(path.read_text())
    raw["tiers"][-1] = {"name": "llm", "kind": "remote", "protocol": "openai", "url": url, "model": "fake-1",
                        "usd_per_input_token": 1e-7, "usd_per_output_token": 4e-7, "retries": 0, "timeout_s": 5}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_a_chat_final_tier_answers_escalated_items_and_is_priced_by_its_tokens(serving_dir, tiny_workdir,
                                                                               labelled_data):
    answers = {"style": "loose"}
    llm = fake_llm(answers)
    with running_server(llm, ready_path="/docs") as url:
        cfg = chat_config(serving_dir, tiny_workdir, url + "/v1", "chat")
        with running_server(create_app(cfg)) as base:
            texts = [HAM, LOTTERY, "Subject: money\n\nsend money now", "hello"]
            out = httpx.post(base + "/v1/classify", json={"texts": texts}, timeout=30).json()["results"]
            by_llm = [(t, d) for t, d in zip(texts, out, strict=True) if d["tier"] == "llm"]
            assert by_llm, "some items must reach the chat tier"
            for t, d in by_llm:
                assert d["label"] == ("spam" if "money" in t.lower() or "lottery" in t.lower() else "ham")
                assert not d["degraded"]
            # an answer outside the label set is never taken: the batch fails and the cheaper answer is served
            answers["style"] = "chatty"
            bad = httpx.post(base + "/v1/classify", json={"texts": texts}, timeout=30).json()["results"]
            for d in [b for b, o in zip(bad, out, strict=True) if o["tier"] == "llm"]:
                assert d["degraded"] and d["tier"] != "llm"
            answers["style"] = "plain"
        assert llm.state.seen[0]["temperature"] == 0 and "ham, spam" in llm.state.seen[0]["messages"][0]["content"]
        # calibration prices the chat tier by the tokens its calls used
        calibrate(cfg, str(labelled_data), epsilon=0.2, delta=0.1, progress=False, budget=None)
        cost = load_config(cfg)[0].tiers[-1].cost
        assert cost.fixed_usd_per_call > 0 and cost.seconds_per_item == 0 and "tokens" in cost.measured


def test_answers_are_parsed_strictly_and_the_tier_must_be_last(tmp_path):
    tier = ChatTier("llm", RemoteConfig(protocol="openai", url="http://x/v1", model="m", labels=["ham", "spam"]))
    assert [tier.parse(a) for a in ("spam", " Ham. ", "'SPAM'", "ham\n")] == ["spam", "ham", "spam", "ham"]
    for a in ("spam or ham", "", "hams", "label: spam"):
        with pytest.raises(ModelError, match="not one of"):
            tier.parse(a)
    assert tier.version().startswith("m@")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"labels": ["a", "b"], "tiers": [
        {"name": "llm", "kind": "remote", "protocol": "openai", "url": "http://x/v1", "model": "m"},
        {"name": "m", "kind": "onnx", "path": "m"}]}))
    with pytest.raises(ConfigError, match="only as the final tier"):
        load_config(tmp_path / "c.yaml")
