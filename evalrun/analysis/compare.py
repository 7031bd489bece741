"""`evalrun compare BASE NEW`: per-cell pass-rate deltas with a paired bootstrap interval and
an exact McNemar test, the items that flipped, and a CI gate.

Cells are matched by (model, prompt name, parameters) — not by cell id, so a changed prompt
text under the same prompt name is compared with its old self. Items are matched by
(row id, repeat, choice index). Everything present on one side only is reported as such.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evalrun.analysis.stats import mcnemar_exact, paired_bootstrap_ci
from evalrun.errors import ConfigError
from evalrun.run.store import MANIFEST, RESULTS, request_rows, require_finished, write_json

if TYPE_CHECKING:
    import pandas as pd

FLIPS_SHOWN = 20  # per cell and direction in compare.md; compare_flips.parquet has them all
ANSWER_CHARS = 300  # of an answer shown in compare.md and the report's flips table


@dataclass(frozen=True)
class Gate:
    scorer: str | None
    fail_on_drop: float
    alpha: float


@dataclass
class Comparison:
    base_dir: Path
    new_dir: Path
    scorer: str
    gate: Gate
    cells: pd.DataFrame  # one row per cell key, both sides
    flips: pd.DataFrame  # one row per flipped item

    @property
    def regressed(self) -> pd.DataFrame:
        return self.cells[self.cells.verdict == "regressed"]


def _manifest(run_dir: Path) -> dict[str, Any]:
    return require_finished(run_dir)


def latest_baseline(new_dir: Path) -> Path:
    """The run of the same experiment that started last before NEW (siblings under reports/)."""
    new = _manifest(new_dir)
    best: tuple[str, Path] | None = None
    for sibling in new_dir.parent.iterdir():
        if sibling == new_dir or not (sibling / RESULTS).is_file() or not (sibling / MANIFEST).is_file():
            continue
        m = orjson.loads((sibling / MANIFEST).read_bytes())
        if m.get("shard"):  # one shard of a sharded run is not a whole run
            continue
        if m.get("experiment") != new.get("experiment") or m.get("started_at", "") >= new.get("started_at", ""):
            continue
        if best is None or m["started_at"] > best[0]:
            best = (m["started_at"], sibling)
    if best is None:
        raise ConfigError(
            f"--baseline latest: no earlier finished run of {new.get('experiment')!r} in {new_dir.parent}"
        )
    return best[1]


def _cell_keys(manifest: dict[str, Any]) -> dict[str, str]:
    """cell_id → a key that is the same for the same model, prompt name and parameters."""
    return {
        c["cell_id"]: orjson.dumps([c["model"], c["prompt_id"], c["params"]], option=orjson.OPT_SORT_KEYS).decode()
        for c in manifest.get("cells", [])
    }


def _label(key: str, varying: set[str]) -> str:
    """model · prompt · the parameters that differ between cells (the rest is noise)."""
    model, prompt, params = orjson.loads(key)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k in varying) or "defaults"
    return f"{model} · {prompt} · {shown}"


def _load(run_dir: Path, manifest: dict[str, Any], scorer: str) -> pd.DataFrame:
    import pandas as pd

    wanted = [
        "cell_id",
        "row_id",
        "repeat",
        "choice_index",
        "status",
        "content",
        "latency_s",
        "total_tokens",
        "error_type",
        f"pass_{scorer}",
        f"score_{scorer}",
        "cost_total",
    ]
    import pyarrow.parquet as pq

    names = set(pq.read_schema(run_dir / RESULTS).names)
    if f"pass_{scorer}" not in names:
        have = sorted(n[5:] for n in names if n.startswith("pass_"))
        raise ConfigError(
            f"{run_dir}: no scorer {scorer!r} in {RESULTS} (has: {', '.join(have) or 'none'}); "
            "add it to the experiment and run: evalrun score RUN_DIR"
        )
    df = pd.read_parquet(run_dir / RESULTS, columns=[c for c in wanted if c in names])
    keys = _cell_keys(manifest)
    df["cell_key"] = df.cell_id.map(keys)
    df["choice_index"] = df.choice_index.fillna(0).astype("int64")
    df["passed"] = df[f"pass_{scorer}"].fillna(False).astype(bool)
    df["score"] = df[f"score_{scorer}"]
    return df


def compare_runs(base_dir: Path, new_dir: Path, gate: Gate) -> Comparison:
    import pandas as pd

    base_m, new_m = _manifest(base_dir), _manifest(new_dir)
    scorer = gate.scorer or _first_scorer(new_m) or _first_scorer(base_m)
    if scorer is None:
        raise ConfigError(
            f"{new_dir}: the run has no scorers to compare pass rates on; add scorers: to the "
            "experiment and run: evalrun score RUN_DIR (for both runs)"
        )
    base, new = _load(base_dir, base_m, scorer), _load(new_dir, new_m, scorer)
    params = [c["params"] for c in base_m.get("cells", []) + new_m.get("cells", [])]
    varying = {k for k in {k for p in params for k in p} if len({orjson.dumps(p.get(k)) for p in params}) > 1}
    item = ["row_id", "repeat", "choice_index"]
    rows: list[dict[str, Any]] = []
    flips: list[pd.DataFrame] = []
    for key in sorted(set(base.cell_key.dropna()) | set(new.cell_key.dropna())):
        b, n = base[base.cell_key == key], new[new.cell_key == key]
        row: dict[str, Any] = {"cell": _label(key, varying), "cell_key": key, "base_items": len(b), "new_items": len(n)}
        if b.empty or n.empty:
            row["verdict"] = "only in new" if b.empty else "only in base"
            rows.append(row)
            continue
        m = b.merge(n, on=item, suffixes=("_base", "_new"))
        k = len(m)
        bp, np_ = m.passed_base.to_numpy(), m.passed_new.to_numpy()
        b_to_f = int((bp & ~np_).sum())
        f_to_p = int((~bp & np_).sum())
        lo, hi = paired_bootstrap_ci(bp.astype(float), np_.astype(float)) if k else (math.nan, math.nan)
        p_value = mcnemar_exact(b_to_f, f_to_p)
        delta = float(np_.mean() - bp.mean()) if k else math.nan
        row.update(
            {
                "matched": k,
                "only_base_items": len(b) - k,
                "only_new_items": len(n) - k,
                "base_pass_rate": float(bp.mean()) if k else math.nan,
                "new_pass_rate": float(np_.mean()) if k else math.nan,
                "delta": delta,
                "delta_ci_low": lo,
                "delta_ci_high": hi,
                "pass_to_fail": b_to_f,
                "fail_to_pass": f_to_p,
                "p_value": p_value,
                "score_delta": float(m.score_new.mean() - m.score_base.mean()) if k else math.nan,
                "base_errors": int((b.status == "error").sum()),
                "new_errors": int((n.status == "error").sum()),
            }
        )
        for side, df in (("base", b), ("new", n)):
            req = request_rows(df)
            row[f"{side}_latency_p50_s"] = req.latency_s.quantile(0.5)
            row[f"{side}_latency_p95_s"] = req.latency_s.quantile(0.95)
            row[f"{side}_tokens_per_request"] = req.total_tokens.mean()
            row[f"{side}_cost"] = req.cost_total.sum(min_count=1) if "cost_total" in req else math.nan
        for what in ("latency_p50_s", "latency_p95_s", "tokens_per_request", "cost"):
            row[f"delta_{what}"] = row[f"new_{what}"] - row[f"base_{what}"]
        significant = p_value < gate.alpha
        if delta < -gate.fail_on_drop and significant:
            row["verdict"] = "regressed"
        elif delta > gate.fail_on_drop and significant:
            row["verdict"] = "improved"
        else:
            row["verdict"] = "unchanged"
        flipped = m[m.passed_base != m.passed_new]
        if len(flipped):
            flips.append(
                pd.DataFrame(
                    {
                        "cell": row["cell"],
                        "row_id": flipped.row_id,
                        "repeat": flipped.repeat,
                        "choice_index": flipped.choice_index,
                        "direction": ["pass→fail" if x else "fail→pass" for x in flipped.passed_base],
                        "base_content": flipped.content_base,
                        "new_content": flipped.content_new,
                    }
                )
            )
        rows.append(row)
    cells = pd.DataFrame(rows)
    flip_df = (
        pd.concat(flips, ignore_index=True)
        if flips
        else pd.DataFrame(
            columns=["cell", "row_id", "repeat", "choice_index", "direction", "base_content", "new_content"]
        )
    )
    return Comparison(base_dir, new_dir, scorer, gate, cells, flip_df)


def _first_scorer(manifest: dict[str, Any]) -> str | None:
    cfg = manifest.get("config") or {}
    gate = (cfg.get("gate") or {}).get("scorer")
    if gate:
        return gate
    for s in cfg.get("scorers") or []:
        return s.get("name") or s.get("type")
    return None


# --------------------------------------------------------------------------- outputs


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:.1f}%"


def _pts(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 100:+.1f}"


def _num(x: Any, fmt: str = "+.3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _cellmd(text: Any) -> str:
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    s = s[:ANSWER_CHARS] + ("…" if len(s) > ANSWER_CHARS else "")
    return html.escape(s).replace("|", "\\|").replace("\n", " ")


ICON = {
    "regressed": "❌ regressed",
    "improved": "✅ improved",
    "unchanged": "unchanged",
    "only in base": "⚠️ only in base",
    "only in new": "⚠️ only in new",
}


def to_markdown(c: Comparison, flips: bool = True) -> str:
    g = c.gate
    verdict = f"**FAIL**: {len(c.regressed)} cell(s) regressed" if len(c.regressed) else "**PASS**: no cell regressed"
    out = [
        f"## evalrun compare: {verdict}",
        "",
        f"Base `{c.base_dir}` → new `{c.new_dir}`. Scorer `{c.scorer}`; a cell regresses when its pass rate "
        f"drops by more than {g.fail_on_drop * 100:g} points and the exact McNemar test gives p < {g.alpha:g}.",
        "",
        "| cell | items | base | new | Δ pts [95% CI] | p | Δ score | Δ p50 s | Δ p95 s | Δ tokens/req | Δ cost | |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in c.cells.to_dict("records"):
        if r["verdict"].startswith("only"):
            out.append(
                f"| {_cellmd(r['cell'])} | {r['base_items'] or r['new_items']} | | | | | | | | | | {ICON[r['verdict']]} |"
            )
            continue
        out.append(
            f"| {_cellmd(r['cell'])} | {r['matched']} | {_pct(r['base_pass_rate'])} | {_pct(r['new_pass_rate'])} | "
            f"{_pts(r['delta'])} [{_pts(r['delta_ci_low'])}, {_pts(r['delta_ci_high'])}] | {r['p_value']:.3g} | "
            f"{_num(r['score_delta'])} | {_num(r['delta_latency_p50_s'])} | {_num(r['delta_latency_p95_s'])} | "
            f"{_num(r['delta_tokens_per_request'], '+.1f')} | {_num(r['delta_cost'], '+.4f')} | {ICON[r['verdict']]} |"
        )
    for r in c.cells.to_dict("records"):
        if r["verdict"].startswith("only"):
            continue
        if r.get("only_base_items") or r.get("only_new_items"):
            out.append(
                f"\n{_cellmd(r['cell'])}: {int(r['only_base_items'])} item(s) only in base, "
                f"{int(r['only_new_items'])} only in new (not compared)."
            )
    if len(c.flips) and not flips:
        out += ["", f"{len(c.flips)} item(s) flipped between the runs: listed in compare.md."]
    elif len(c.flips):
        out += ["", "### Flipped items", ""]
        order = {"regressed": 0, "improved": 1, "unchanged": 2}
        verdicts = dict(zip(c.cells.cell, c.cells.verdict))
        for cell, group in sorted(c.flips.groupby("cell"), key=lambda kv: order.get(verdicts.get(kv[0], ""), 3)):
            for direction in ("pass→fail", "fail→pass"):
                part = group[group.direction == direction]
                if part.empty:
                    continue
                out += [
                    f"**{_cellmd(cell)}** — {len(part)} {direction}",
                    "",
                    "| row | repeat | base answer | new answer |",
                    "|---|---:|---|---|",
                ]
                for f in part.head(FLIPS_SHOWN).to_dict("records"):
                    out.append(
                        f"| {_cellmd(f['row_id'])} | {f['repeat']} | {_cellmd(f['base_content'])} | {_cellmd(f['new_content'])} |"
                    )
                if len(part) > FLIPS_SHOWN:
                    out.append(f"\n…and {len(part) - FLIPS_SHOWN} more in compare_flips.parquet")
                out.append("")
    return "\n".join(out) + "\n"


def to_junit(c: Comparison) -> str:
    cases = []
    for r in c.cells.to_dict("records"):
        name = html.escape(r["cell"], quote=True)
        if r["verdict"] == "regressed":
            msg = (
                f"pass rate {_pct(r['base_pass_rate'])} → {_pct(r['new_pass_rate'])} ({_pts(r['delta'])} pts, "
                f"p={r['p_value']:.3g}); {r['pass_to_fail']} item(s) pass→fail"
            )
            cases.append(
                f'  <testcase classname="evalrun.analysis.compare" name="{name}"><failure message="{html.escape(msg, quote=True)}"/></testcase>'
            )
        elif r["verdict"].startswith("only"):
            cases.append(
                f'  <testcase classname="evalrun.analysis.compare" name="{name}"><skipped message="{r["verdict"]}"/></testcase>'
            )
        else:
            cases.append(f'  <testcase classname="evalrun.analysis.compare" name="{name}"/>')
    failures = int((c.cells.verdict == "regressed").sum())
    skipped = int(c.cells.verdict.str.startswith("only").sum())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuite name="evalrun compare" tests="{len(cases)}" failures="{failures}" skipped="{skipped}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )


def write_outputs(c: Comparison, out_dir: Path, junit: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(to_markdown(c), encoding="utf-8")
    c.cells.drop(columns=["cell_key"]).to_parquet(out_dir / "compare.parquet", index=False)
    c.flips.to_parquet(out_dir / "compare_flips.parquet", index=False)
    write_json(
        out_dir / "compare.json",
        {
            "base": str(c.base_dir),
            "new": str(c.new_dir),
            "scorer": c.scorer,
            "fail_on_drop": c.gate.fail_on_drop,
            "alpha": c.gate.alpha,
            "regressed": list(c.regressed.cell),
            "verdict": "fail" if len(c.regressed) else "pass",
        },
    )
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_text(to_junit(c), encoding="utf-8")
