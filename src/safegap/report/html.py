"""``write_report(run_dir)``: one self-contained HTML file for an evaluation run.

Everything is inline: CSS, a little JavaScript (sample filters), and plots as base64 PNG. Every
piece of text that comes from data (prompts, generations, ids, judge output) is HTML-escaped, so
a generation containing ``</script>`` or markup shows as text. When the page has loaded and its
script ran, it adds ``<div id="report-ready" data-tables="N">``; script errors are collected in
``#js-errors``. Headless browser tests check both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safegap.eval.records import read_records
from safegap.report import plots
from safegap.report.frontier import find_frontier, frontier_section
from safegap.report.markup import Row, e, fmt_estimate, slug, table
from safegap.specs import parse_spec

METRIC_COLUMNS = (
    ("unsafe_rate", "unsafe rate (ASR)"),
    ("defense_success_rate", "defense success"),
    ("refusal_rate", "refusal rate"),
    ("over_refusal", "over-refusal"),
)

#: Sample browser columns and their share of the table width (percent).
SAMPLE_COLUMNS = (
    ("benchmark", 9),
    ("sample", 6),
    ("category", 9),
    ("condition", 8),
    ("defense", 10),
    ("prompt", 18),
    ("image", 8),
    ("generation", 18),
    ("verdicts", 9),
    ("error", 5),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1300px;
 padding:0 1em;color:#1d2430}
h1{font-size:1.5em}h2{margin-top:1.8em;border-bottom:2px solid #dde3ea;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
table.run td{overflow-wrap:anywhere;max-width:60em}
th,td{border:1px solid #d3dae3;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eef2f7}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#6b7685;font-size:.85em}nav a{margin-right:1em}
tr.pareto td:first-child{font-weight:bold}tr.chosen{background:#eaf6ea}
img.plot{max-width:100%;border:1px solid #e4e8ee;margin:.5em 0}
#sample-table{table-layout:fixed;width:100%}
#sample-table td,#sample-table th{overflow-wrap:anywhere}
#sample-table td.gen,#sample-table td.prompt{white-space:pre-wrap;overflow-wrap:break-word;
 font-family:ui-monospace,monospace;font-size:.95em}
tr.errored{background:#fff1f0}.filters{display:flex;gap:.6em;flex-wrap:wrap;margin:.5em 0}
.muted{color:#6b7685}#js-errors{color:#b00020;font-weight:bold}
"""

SCRIPT = """
(function(){
  function q(id){return document.getElementById(id);}
  function applyFilters(){
    var text=(q('f-text').value||'').toLowerCase();
    var sel={bench:q('f-bench').value,cond:q('f-cond').value,def:q('f-def').value};
    var errorsOnly=q('f-errors').checked;var shown=0;
    var rows=document.querySelectorAll('#sample-table tbody tr');
    for(var i=0;i<rows.length;i++){
      var r=rows[i];var ok=(!sel.bench||r.dataset.bench===sel.bench)&&(!sel.cond||r.dataset.cond===sel.cond)
        &&(!sel.def||r.dataset.def===sel.def)&&(!errorsOnly||r.classList.contains('errored'))
        &&(!text||r.textContent.toLowerCase().indexOf(text)>=0);
      r.style.display=ok?'':'none';if(ok){shown++;}
    }
    q('f-count').textContent=shown+' shown';
  }
  ['f-text','f-bench','f-cond','f-def','f-errors'].forEach(function(id){
    var el=q(id);if(el){el.addEventListener('input',applyFilters);el.addEventListener('change',applyFilters);}
  });
  if(q('f-text')){applyFilters();}
  var tables=document.querySelectorAll('table');
  var ready=document.createElement('div');ready.id='report-ready';ready.hidden=true;
  ready.setAttribute('data-tables',String(tables.length));ready.textContent='ready';
  document.body.appendChild(ready);
})();
"""

ERROR_HOOK = """
window.__reportErrors=[];
window.addEventListener('error',function(e){
  window.__reportErrors.push(String(e.message||e));
  var box=document.getElementById('js-errors');
  if(box){box.hidden=false;box.textContent='script error: '+window.__reportErrors.join('; ');}
});
"""


def metrics_table(rows: Sequence[Row]) -> str:
    headers = ["condition", "defense", "judge", "n", "errors", *(label for _, label in METRIC_COLUMNS)]
    body = [
        [
            e(r["condition"]),
            e(r["defense"]),
            e(r["judge"]),
            e(r["n"]),
            e(r["errors"]),
            *(fmt_estimate(r.get(m)) for m, _ in METRIC_COLUMNS),
        ]
        for r in rows
    ]
    return table(headers, body, numeric={3, 4, 5, 6, 7, 8}, attrs='class="metrics"')


def differences_table(rows: Sequence[Row]) -> str:
    headers = ["compare", "fixed", "judge", "metric", "other", "baseline", "n", "other - baseline"]
    body = []
    for r in rows:
        fixed = r.get("condition") if r["compare"] == "defense" else r.get("defense")
        body.append(
            [
                e(r["compare"]),
                e(fixed),
                e(r["judge"]),
                e(r["metric"]),
                e(r["other"]),
                e(r["baseline"]),
                e(r["n"]),
                fmt_estimate(r["difference"]),
            ]
        )
    return table(headers, body, numeric={6, 7}, attrs='class="differences"')


def _alpha_of(defense: str) -> tuple[str, float] | None:
    """``("cmrm:x", 0.5)`` for ``"cmrm:x,alpha=0.5"`` (composite specs too), else None."""
    from safegap.eval.wrappers import split_composite

    try:
        parts = split_composite(defense)
    except Exception:  # noqa: BLE001 - report tolerates any spec
        parts = [defense]
    base_parts, alpha = [], None
    for part in parts:
        try:
            spec = parse_spec(part, kind="defense")
        except ValueError:
            base_parts.append(part)
            continue
        if "alpha" in spec.options:
            try:
                alpha = float(spec.options["alpha"])
            except ValueError:
                return None
            options = {k: v for k, v in spec.options.items() if k != "alpha"}
            base_parts.append(str(type(spec)(spec.name, spec.arg, options)))
        else:
            base_parts.append(part)
    return None if alpha is None else ("+".join(base_parts), alpha)


def alpha_sections(metrics: Sequence[Row]) -> list[str]:
    overall = [r for r in metrics if r["category"] == "all"]
    sweeps: dict[tuple[str, str, str], list[tuple[float, Row]]] = {}
    for r in overall:
        parsed = _alpha_of(r["defense"])
        if parsed is not None:
            sweeps.setdefault((r["benchmark"], parsed[0], r["judge"]), []).append((parsed[1], r))
    out = []
    for (bench, base, judge), points in sweeps.items():
        if len({a for a, _ in points}) < 2:
            continue
        data = [(a, r["condition"], m, r.get(m)) for a, r in points for m in ("unsafe_rate", "over_refusal")]
        png = plots.alpha_sweep(data, f"{bench}: {plots.display_spec(base)} ({judge})")
        if png:
            rows = [
                [
                    e(r["condition"]),
                    e(f"{a:g}"),
                    fmt_estimate(r.get("unsafe_rate")),
                    fmt_estimate(r.get("over_refusal")),
                ]
                for a, r in sorted(points, key=lambda p: (p[1]["condition"], p[0]))
            ]
            out.append(
                f"<h3>{e(bench)}: {e(base)} <span class='muted'>({e(judge)})</span></h3>"
                f'<img class="plot" alt="alpha sweep" src="data:image/png;base64,{png}">'
                + table(
                    ["condition", "alpha", "unsafe rate", "over-refusal"],
                    rows,
                    numeric={1, 2, 3},
                    attrs='class="alpha"',
                )
            )
    return out


def _verdicts_html(record: Row) -> str:
    parts = []
    for v in record.get("verdicts") or []:
        bits = []
        if v.get("unsafe") is not None:
            bits.append("unsafe" if v["unsafe"] else "safe")
        if v.get("refusal") is not None:
            bits.append("refused" if v["refusal"] else "not refused")
        if v.get("categories"):
            bits.append(",".join(map(str, v["categories"])))
        if v.get("error"):
            bits.append(f"error: {v['error']}")
        parts.append(f"<b>{e(v.get('judge'))}</b>: {e('; '.join(bits))}")
    return "<br>".join(parts)


def samples_section(records: Sequence[Row], max_samples: int) -> str:
    shown = records[:max_samples]
    options = {}
    for key, field in (("bench", "benchmark"), ("cond", "condition"), ("def", "defense")):
        values = list(dict.fromkeys(str(r[field]) for r in records))
        options[key] = "".join(f'<option value="{e(v)}">{e(v)}</option>' for v in values)
    rows = []
    for r in shown:
        cls = ' class="errored"' if r.get("error") else ""
        rows.append(
            f'<tr{cls} data-bench="{e(r["benchmark"])}" data-cond="{e(r["condition"])}" data-def="{e(r["defense"])}">'
            f"<td>{e(r['benchmark'])}</td><td>{e(r['sample_id'])}</td><td>{e(r.get('category'))}</td>"
            f'<td>{e(r["condition"])}</td><td>{e(r["defense"])}</td><td class="prompt">{e(r.get("prompt"))}</td>'
            f'<td>{e(r.get("image"))}</td><td class="gen">{e(r.get("generation"))}</td>'
            f"<td>{_verdicts_html(r)}</td><td>{e(r.get('error'))}</td></tr>"
        )
    note = (
        f'<p class="muted">showing the first {len(shown)} of {len(records)} samples</p>'
        if len(shown) < len(records)
        else ""
    )
    filters = (
        '<div class="filters"><input id="f-text" type="search" placeholder="search text">'
        f'<select id="f-bench"><option value="">all benchmarks</option>{options["bench"]}</select>'
        f'<select id="f-cond"><option value="">all conditions</option>{options["cond"]}</select>'
        f'<select id="f-def"><option value="">all defenses</option>{options["def"]}</select>'
        '<label><input id="f-errors" type="checkbox"> errors only</label><span id="f-count" class="muted"></span></div>'
    )
    head = "".join(f"<th>{h}</th>" for h, _ in SAMPLE_COLUMNS)
    # Fixed layout with set widths: ids without spaces (paths in defense specs, image references)
    # wrap inside their column instead of pushing the table past the page.
    cols = "".join(f'<col style="width:{w}%">' for _, w in SAMPLE_COLUMNS)
    return (
        f'<section id="samples"><h2>Samples</h2>{note}{filters}<table id="sample-table"><colgroup>{cols}'
        f"</colgroup><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def build_report(
    run_dir: Path,
    summary: Row,
    records: Sequence[Row],
    max_samples: int = 5000,
    frontier: tuple[Row, bytes | None] | None = None,
) -> str:
    metrics: list[Row] = summary.get("metrics", [])
    run = summary.get("run", {})
    benches = list(dict.fromkeys(r["benchmark"] for r in metrics))
    parts = [f"<h1>safegap evaluation report: {e(run_dir.name)}</h1>"]
    config_rows = [[e(k), e(json.dumps(v) if not isinstance(v, str) else v)] for k, v in run.items()]
    parts.append(
        '<section id="run"><h2>Run</h2>'
        + table(["setting", "value"], config_rows, attrs='class="run"')
        + "</section>"
    )
    nav = "".join(f'<a href="#bench-{slug(b)}">{e(b)}</a>' for b in benches)
    if frontier is not None:
        nav = "<a href='#frontier'>frontier</a>" + nav
    parts.append(f"<nav>{nav}<a href='#samples'>samples</a></nav>")
    if frontier is not None:
        parts.append(frontier_section(*frontier))
    for bench in benches:
        rows = [r for r in metrics if r["benchmark"] == bench]
        section = [
            f'<section class="benchmark" id="bench-{slug(bench)}"><h2>{e(bench)}</h2>',
            "<h3>Overall</h3>",
            metrics_table([r for r in rows if r["category"] == "all"]),
        ]
        for judge in dict.fromkeys(r["judge"] for r in rows):
            judged = [r for r in rows if r["judge"] == judge]
            # Harmful categories show the unsafe rate, benign ones the over-refusal; a benchmark
            # with neither verdict (a judge that only reports refusals) shows the refusal rate.
            wanted = [m for m in ("unsafe_rate", "over_refusal") if any(r.get(m) for r in judged)]
            for metric in wanted or ["refusal_rate"]:
                png = plots.category_bars(
                    judged, metric, f"{bench}: {plots.METRIC_LABELS[metric]} by category ({judge})"
                )
                if png:
                    section.append(
                        f'<img class="plot" alt="{e(metric)} by category" src="data:image/png;base64,{png}">'
                    )
        cats = [r for r in rows if r["category"] != "all"]
        if cats:
            section.append(
                "<details><summary>per-category table</summary>"
                + table(
                    [
                        "category",
                        "condition",
                        "defense",
                        "judge",
                        "n",
                        "errors",
                        *(label for _, label in METRIC_COLUMNS),
                    ],
                    [
                        [
                            e(r["category"]),
                            e(r["condition"]),
                            e(r["defense"]),
                            e(r["judge"]),
                            e(r["n"]),
                            e(r["errors"]),
                            *(fmt_estimate(r.get(m)) for m, _ in METRIC_COLUMNS),
                        ]
                        for r in cats
                    ],
                    numeric={4, 5, 6, 7, 8, 9},
                    attrs='class="categories"',
                )
                + "</details>"
            )
        diffs = [
            d for d in summary.get("differences", []) if d["benchmark"] == bench and d["category"] == "all"
        ]
        for compare, label in (("defense", "defenses vs"), ("condition", "conditions vs")):
            chosen = [d for d in diffs if d["compare"] == compare]
            if not chosen:
                continue
            baseline = chosen[0]["baseline"]
            opened = " open" if len(chosen) <= 12 else ""
            section.append(
                f"<details{opened}><summary>Paired differences, {label} {e(baseline)} "
                f"({len(chosen)} rows, category all)</summary>" + differences_table(chosen) + "</details>"
            )
        section.append("</section>")
        parts.append("".join(section))
    sweeps = alpha_sections(metrics)
    if sweeps:
        parts.append('<section id="alpha"><h2>Alpha sweeps</h2>' + "".join(sweeps) + "</section>")
    agreement = summary.get("agreement", [])
    if agreement:
        agreement_rows = [
            [
                e(a["benchmark"]),
                e(a["condition"]),
                e(a["defense"]),
                e(a["judge_a"]),
                e(a["judge_b"]),
                e(a["verdict"]),
                e(a["n"]),
                e("-" if a["kappa"] is None else f"{a['kappa']:.3f}"),
                e("-" if a["observed_agreement"] is None else f"{a['observed_agreement']:.3f}"),
            ]
            for a in agreement
        ]
        parts.append(
            '<section id="agreement"><h2>Judge agreement (Cohen\'s kappa)</h2>'
            + table(
                [
                    "benchmark",
                    "condition",
                    "defense",
                    "judge A",
                    "judge B",
                    "verdict",
                    "n",
                    "kappa",
                    "agreement",
                ],
                agreement_rows,
                numeric={6, 7, 8},
                attrs='class="agreement"',
            )
            + "</section>"
        )
    parts.append(samples_section(records, max_samples))
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>safegap report: {e(run_dir.name)}</title><style>{CSS}</style><script>{ERROR_HOOK}</script>"
        f'</head><body><div id="js-errors" hidden></div>\n{body}\n<script>{SCRIPT}</script></body></html>\n'
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, max_samples: int = 5000) -> Path:
    """Write the report for ``run_dir`` (default ``run_dir/report.html``) and return its path; a
    frontier beside the run (:func:`find_frontier`) is shown first."""
    folder = Path(run_dir)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found (is {folder} a finished `safegap eval` run?)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{summary_path}: not valid JSON ({exc})") from exc
    records = read_records(folder / "samples.jsonl")
    target = Path(out) if out is not None else folder / "report.html"
    report = build_report(folder, summary, records, max_samples, find_frontier(folder))
    target.write_text(report, encoding="utf-8")
    return target
