"""The decision log: every decision the gateway makes, durably, with feedback by request id.

* :mod:`~tiergate.decisionlog.store`: the SQLite schema, its migrations, and the queries;
* :mod:`~tiergate.decisionlog.writer`: the gateway's writer thread (group commit, retention);
* :mod:`~tiergate.decisionlog.privacy`: what of a text is kept, and its redaction;
* :mod:`~tiergate.decisionlog.learn`: training data for the small tiers from the log;
* :mod:`~tiergate.decisionlog.cli`: ``tiergate feedback export`` and ``tiergate log ...``.
"""
