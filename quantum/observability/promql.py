"""The PromQL the dashboards and the alert rules share, so that a panel and its alert count alike.

Counters are read through :func:`counted` rather than bare ``increase()``. prometheus_client creates a labelled
series on its first increment, so it appears at 1 with no earlier sample, and ``increase()`` (which needs two
samples) never sees that first event: the first partial compensation, dead letter or finding of each kind after
a worker starts would go uncounted.
"""

from __future__ import annotations

# The worker's scrape job. Other Temporal workers scraped by the same Prometheus report the same SDK metrics
# (``temporal_worker_*``...): selecting the job keeps them out of the product's panels and alerts.
WORKER_JOB = 'job="quantum-worker"'


def series(metric: str, matchers: str = "") -> str:
    """A selector of ``metric``, with ``matchers`` (``a="b", c=~"d"``) when there are any."""
    return f"{metric}{{{matchers}}}" if matchers else metric


def counted(selector: str, window: str) -> str:
    """How much each series of the counter ``selector`` grew within ``window``.

    A series born within the window counts with its whole value: it has no sample ``window`` ago, so
    ``unless ... offset`` keeps it, while ``increase() > 0`` keeps every older series that grew. A series present
    in both is counted once, by its increase (``or`` keeps the left side). Series that did not grow are left out.
    """
    return f"(increase({selector}[{window}]) > 0 or ({selector} unless {selector} offset {window}))"


def quantile(q: float, histogram: str, matchers: str, by: str, window: str) -> str:
    """The ``q`` quantile of the histogram ``histogram`` (its ``_bucket`` series) over ``window``, per ``by``."""
    keep = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({keep}) (rate({series(histogram + '_bucket', matchers)}[{window}])))"
