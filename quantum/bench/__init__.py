"""``quantum bench``: what the orchestration costs on top of Temporal and NATS, each suite measured against a
baseline in the same run on the same servers (``saga``, ``events``, ``pipeline``, ``footprint``; ``chaos`` lives in
:mod:`quantum.chaos`). Figures go into a :class:`~quantum.bench.report.Report`."""
