"""The rules tier: YAML rules that operators edit safely (docs/rules.md).

Modules, in the order data flows through them:

- ``schema``: the language as pydantic models (unknown keys are errors); ``tiergate rules schema``.
- ``loader``: YAML files or directories to rules, keeping every node's line and column; schema problems.
- ``lint`` (+ ``backtracking``): one small check class per problem kind, all problems at once.
- ``conditions``, ``engine``: compiled matchers (regex under a time limit, keyword automata, features) and
  first-match / scoring evaluation, with per-rule metrics.
- ``examples``, ``evaluate``: ``rules test``, ``rules eval``, ``rules bench``.
- ``tier``: :class:`~tiergate.rules.tier.RulesTier`, the Tier with validated atomic swaps; ``reload``: the
  watchfiles watcher; ``cli``: ``tiergate rules ...``; ``packs/``: the shipped rule packs.

Imports stay lazy here so that ``tiergate rules --help`` starts fast.
"""
