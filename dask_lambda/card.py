"""What a Lambda cluster shows of itself: its ``repr`` and its card in Jupyter.

In the style of distributed's cluster card, with what matters here instead of threads and
memory of workers: where tasks run (backend, bucket, function, region), what each gets
(memory, timeout), how many run at once (the concurrency cap), and live figures (in flight,
invocations, cold starts, cost so far).
"""

from __future__ import annotations

import html
from typing import Any


def summary(cluster: Any) -> dict[str, str]:
    """The cluster's facts as ``{label: text}``, in display order."""
    backend = cluster.backend
    settings = cluster.settings
    facts = {
        "Backend": backend.name or type(backend).__name__,
        "Bucket": f"s3://{cluster.bucket}/{cluster.prefix}".rstrip("/"),
    }
    function = getattr(backend, "function", None)
    if function:
        facts["Function"] = str(function)
    region = getattr(backend, "region", None)
    if region:
        facts["Region"] = str(region)
    facts["Memory"] = f"{settings.memory:,} MB per task"
    facts["Timeout"] = f"{settings.timeout:g} s"
    facts["Concurrency"] = f"{settings.concurrency:,} tasks at once"
    executor = cluster.executor
    stats = cluster.lambda_stats()
    facts["In flight"] = str(executor.in_flight if executor is not None else 0)
    facts["Invocations"] = (f"{stats.get('invocations', 0):,} "
                            f"({stats.get('cold_starts', 0):,} cold starts)")
    facts["Cost so far"] = f"${cluster.cost.dollars():.4f}"
    return facts


def text(cluster: Any) -> str:
    """``LambdaCluster(name, backend=..., ...)``: one line."""
    facts = summary(cluster)
    parts = [f"{label.lower()}={value}" for label, value in facts.items()]
    return f"{type(cluster).__name__}({cluster.name}, {', '.join(parts)})"


def html_card(cluster: Any) -> str:
    """The Jupyter card: distributed's layout (dashboard link, facts in a table, the
    scheduler's own card below)."""
    facts = summary(cluster)
    link = cluster.dashboard_link
    rows = []
    items = list(facts.items())
    if link:
        items.insert(0, ("Dashboard", f'<a href="{html.escape(link)}" target="_blank">'
                                      f"{html.escape(link)}</a>"))
    for i in range(0, len(items), 2):
        cells = "".join(
            f'<td style="text-align: left;"><strong>{label}:</strong> '
            f"{value if label == 'Dashboard' else html.escape(value)}</td>"
            for label, value in items[i:i + 2])
        rows.append(f"<tr>{cells}</tr>")
    try:
        scheduler = cluster.scheduler_info._repr_html_()
    except AttributeError:
        scheduler = "Scheduler not started yet."
    return (
        '<div class="jp-RenderedHTMLCommon jp-RenderedHTML jp-mod-trusted '
        'jp-OutputArea-output"><div style="width: 24px; height: 24px; background-color: '
        '#ff9900; border: 3px solid #9D9D9D; border-radius: 5px; position: absolute;"></div>'
        '<div style="margin-left: 48px;">'
        f'<h3 style="margin-bottom: 0px; margin-top: 0px;">{type(cluster).__name__}</h3>'
        f'<p style="color: #9D9D9D; margin-bottom: 0px;">{html.escape(str(cluster.name))}</p>'
        f'<table style="width: 100%; text-align: left;">{"".join(rows)}</table>'
        '<details><summary style="margin-bottom: 20px;"><h3 style="display: inline;">'
        f"Scheduler Info</h3></summary>{scheduler}</details></div></div>")
