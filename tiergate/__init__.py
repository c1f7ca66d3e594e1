"""tiergate: an inference cascade gateway.

Each classification request is answered by the cheapest tier that is confident enough (rules, then small
ONNX models, then a large sparse PyTorch model), and every decision carries its label, confidence, tier,
reason, latency and cost, so that the cost saved against sending everything to the large model is measured,
not guessed.
"""

__version__ = "0.1.0"
