"""SUMMARY.html: the page a reviewer opens first (counts, readers, guideline versions, agreement, open cases)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jinja2

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Submission package: {{ n.project }}</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}
td,th{border:1px solid #999;padding:.2em .5em;text-align:left}.open{color:#a00}</style></head><body>
<h1>Submission package: {{ n.project }} (project {{ n.project_id }})</h1>
<p>Check it offline with <code>medannot package verify FOLDER</code>, or with any BagIt tool; when
<code>manifest.p7s</code> is present, with <code>openssl cms -verify -binary -content tagmanifest-sha256.txt
-in manifest.p7s -inform PEM -CAfile signer-cert.pem -purpose any</code>.</p>
<h2>Counts</h2><table>
<tr><th>Cases</th><td>{{ n.cases }}</td></tr><tr><th>Final cases</th><td>{{ n.final_cases }}</td></tr>
<tr><th>Open (not final) cases</th><td>{{ n.open_cases|length }}</td></tr>
<tr><th>Reads (all versions)</th><td>{{ n.reads }}</td></tr><tr><th>Consensus SEGs</th><td>{{ n.consensus }}</td></tr>
<tr><th>Reviewer-edited SEGs</th><td>{{ n.edited }}</td></tr><tr><th>E-signatures</th><td>{{ n.signatures }}</td></tr>
<tr><th>Audit records (head)</th><td>{{ n.audit_head.records }} (record {{ n.audit_head.seq }},
<code>{{ n.audit_head.hash }}</code>)</td></tr>
<tr><th>De-identification gate</th><td>{{ n.deid }}</td></tr></table>
<h2>Open cases</h2>
{% if n.open_cases %}<p class="open">These cases are not final (review or signatures missing); their files are
included as they stand:</p><ul>{% for c in n.open_cases %}<li>{{ c }}</li>{% endfor %}</ul>
{% else %}<p>None: every case is final.</p>{% endif %}
<h2>Readers</h2><table><tr><th>User</th><th>Printed name</th><th>Role</th><th>Qualification</th>
<th>Credentials</th><th>Trained on</th><th>Cases read</th><th>Cases reviewed</th></tr>
{% for r in readers %}<tr><td>{{ r.user }}</td><td>{{ r.printed_name or "" }}</td><td>{{ r.role }}</td>
<td>{{ r.qualification or "" }}</td><td>{{ r.credentials or "" }}</td><td>{{ r.trained_on or "" }}</td>
<td>{{ r.cases_read.split(";")|reject("equalto", "")|list|length }}</td>
<td>{{ r.cases_reviewed.split(";")|reject("equalto", "")|list|length }}</td></tr>{% endfor %}</table>
<h2>Guideline versions</h2><table><tr><th>Guideline</th><th>Version</th><th>sha256</th><th>File</th></tr>
{% for g in guidelines %}<tr><td>{{ g.guideline_id }}</td><td>{{ g.version }}</td><td><code>{{ g.sha256 }}</code></td>
<td>data/{{ g.file }}</td></tr>{% endfor %}</table>
<h2>Agreement between readers (stored metrics)</h2><table><tr><th>Segment</th><th>Pairs</th><th>Mean Dice</th>
<th>Lowest Dice</th></tr>{% for seg, a in agreement.items() %}<tr><td>{{ seg }}</td><td>{{ a.pairs }}</td>
<td>{{ "%.3f"|format(a.mean_dice) }}</td><td>{{ "%.3f"|format(a.min_dice) }}</td></tr>{% endfor %}</table>
<p>Per case and pair: data/agreement/agreement.json.</p>
{% for f in figures %}<figure><img src="{{ f }}" alt="{{ f }}" style="max-width:100%"><figcaption>data/{{ f }}
</figcaption></figure>{% endfor %}
<h2>E-signatures</h2><table><tr><th>Who</th><th>Printed name</th><th>When (UTC)</th><th>Meaning</th><th>File</th></tr>
{% for s in signatures %}<tr><td>{{ s.user }}</td><td>{{ s.printed_name }}</td><td>{{ s.signed_at }}</td>
<td>{{ s.meaning }}</td><td>data/{{ s.file }}</td></tr>{% endfor %}</table>
</body></html>
"""


def render_summary(numbers: dict[str, Any], readers: list[dict[str, Any]], guidelines: list[dict[str, Any]],
                   agreement: dict[str, Any], signatures: list[dict[str, Any]], figures: list[str] = ()) -> str:
    """The HTML summary (every value escaped); ``figures`` are the agreement PNGs, relative to ``data/``."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE).render(n=numbers, readers=readers, guidelines=guidelines,
                                             agreement=agreement, signatures=signatures, figures=list(figures))


def render_pdf(html: str, base: Path, target: Path) -> str | None:
    """SUMMARY.pdf from the HTML (figures resolved under ``base``) with WeasyPrint; the reason when it cannot run
    here (WeasyPrint or its Pango library missing), so the package says so instead of silently lacking the PDF."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:
        return f"SUMMARY.pdf not made: WeasyPrint cannot run here ({exc}); pip install weasyprint and the Pango library"
    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    HTML(string=html, base_url=str(base)).write_pdf(str(target))
    return None
