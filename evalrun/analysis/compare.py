"""`evalrun compare BASE NEW`: per-cell pass-rate deltas with the dataset row as the unit (a
bootstrap interval over rows and a paired test on rows: compare_rows.py), the rows that flipped,
and a CI gate.

Cells are matched by (model, prompt name, parameters) — not by cell id, so a changed prompt
text under the same prompt name is compared with its old self. Rows are matched by row id; a
row's repeats and choices are its answers, never matched one to one (repeat i of one run has
nothing to do with repeat i of another). Everything present on one side only is reported as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evalrun.analysis.compare_rows import FLIP_COLUMNS, compare_cell
from evalrun.errors import ConfigError
from evalrun.run.store import (
    DATA_PREFIX,
    RESULTS,
    GridInfo,
    Manifest,
    RunStatus,
    manifest_if_any,
    require_finished,
)

if TYPE_CHECKING:
    import pandas as pd

FLIPS_SHOWN = 20  # per cell and direction in compare.md; compare_flips.parquet has them all
ANSWER_CHARS = 300  # of an answer shown in compare.md and the report's flips table


@dataclass(frozen=True)
class Gate:
    scorer: str | None
    fail_on_drop: float
    alpha: float
    strict: bool = False  # a baseline that differs (provider, dataset, parameters, cells) fails the gate
    min_passes: int | None = None  # a row passes when k of its answers (repeats × choices) pass


@dataclass
class Comparison:
    base_dir: Path
    new_dir: Path
    scorer: str
    gate: Gate
    cells: pd.DataFrame  # one row per cell key, both sides
    flips: pd.DataFrame  # one row per flipped item
    warnings: list[str] = field(default_factory=list)  # how the baseline differs from the new run

    @property
    def regressed(self) -> pd.DataFrame:
        return self.cells[self.cells.verdict == "regressed"]

    @property
    def compared(self) -> int:
        """Cells both runs answered on at least one common row: the cells a verdict is about."""
        unmatched = {"only in base", "only in new", "no matched items"}
        return int((~self.cells.verdict.isin(unmatched)).sum()) if len(self.cells) else 0

    @property
    def failed(self) -> bool:
        """The gate's answer: a cell regressed, nothing could be compared (a gate that compared
        nothing must not pass), or (strict) the runs are not comparable as they are."""
        return bool(len(self.regressed)) or not self.compared or (self.gate.strict and bool(self.warnings))


def gate_for(
    new_dir: Path,
    scorer: str | None,
    fail_on_drop: float | None,
    alpha: float | None,
    strict: bool = False,
    min_passes: int | None = None,
) -> Gate:
    """The gate: command-line values, else the new run's `gate:` config, else the defaults."""
    for name, value in (("--fail-on-drop", fail_on_drop), ("--alpha", alpha)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    if min_passes is not None and min_passes < 1:
        raise ConfigError(f"--min-passes must be a whole number of at least 1, got {min_passes}")
    cfg = (manifest_if_any(new_dir).config or {}).get("gate") or {}  # damaged: one line; config is the YAML
    return Gate(
        scorer=scorer or cfg.get("scorer"),
        fail_on_drop=fail_on_drop if fail_on_drop is not None else cfg.get("fail_on_drop", 0.02),
        alpha=alpha if alpha is not None else cfg.get("alpha", 0.05),
        strict=strict,
        min_passes=min_passes if min_passes is not None else cfg.get("min_passes"),
    )


def _manifest(run_dir: Path) -> Manifest:
    return require_finished(run_dir)


def cell_key(model: str | None, prompt_id: str | None, params: dict[str, Any]) -> str:
    """A key that is the same for the same model, prompt name and parameters (cell ids change
    with the prompt's text: runs are matched by this)."""
    return orjson.dumps([model, prompt_id, params], option=orjson.OPT_SORT_KEYS).decode()


def cell_keys(manifest: Manifest) -> dict[str, str]:
    """cell_id → its cell_key."""
    return {str(c.cell_id): cell_key(c.model, c.prompt_id, c.params) for c in manifest.cells}


def _label(key: str, varying: set[str]) -> str:
    """model · prompt · the parameters that differ between cells (the rest is noise)."""
    model, prompt, params = orjson.loads(key)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k in varying) or "defaults"
    return f"{model} · {prompt} · {shown}"


def endpoints(manifest: Manifest) -> set[str]:
    """What answered the run's cells: provider name, kind and base URLs (the simulator has none)."""
    providers = manifest.providers or {}  # each the provider's config, as resolved
    out = set()
    for name in {c.provider for c in manifest.cells}:
        p = providers.get(str(name)) or {}
        urls = ", ".join(p.get("base_urls") or []) if p.get("kind") != "simulator" else ""
        out.add(f"{name} ({p.get('kind') or 'openai'}{': ' + urls if urls else ''})")
    return out


def _differences(base_m: Manifest, new_m: Manifest, base: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """Everything that makes the two runs not the same experiment, one sentence each."""
    out = []
    if base_m.status is not RunStatus.COMPLETED:
        out.append(f"the base run is {base_m.status}, not completed")
    if (b := endpoints(base_m)) != (n := endpoints(new_m)):
        out.append(f"the provider differs: base {', '.join(sorted(b))}; new {', '.join(sorted(n))}")
    bg, ng = base_m.grid or GridInfo(), new_m.grid or GridInfo()
    if Path(bg.dataset or "").name != Path(ng.dataset or "").name or bg.rows != ng.rows:
        out.append(
            f"the dataset differs: base {Path(bg.dataset or '?').name} ({bg.rows} rows); "
            f"new {Path(ng.dataset or '?').name} ({ng.rows} rows)"
        )
    data = sorted(c for c in set(base.columns) & set(new.columns) if c.startswith(DATA_PREFIX))
    if data:
        first = ["row_id", *data]
        b0, n0 = base[base.choice_index == 0][first], new[new.choice_index == 0][first]
        both = b0.drop_duplicates("row_id").merge(n0.drop_duplicates("row_id"), on="row_id")
        differs = sum((both[f"{c}_x"].fillna("") != both[f"{c}_y"].fillna("")) for c in data)
        if len(both) and (rows := int(differs.astype(bool).sum())):
            out.append(f"the dataset differs: {rows} matched row(s) have other column values")
    bp, np_ = _params_by_name(base_m), _params_by_name(new_m)
    diff = sorted(k for k in set(bp) | set(np_) if bp.get(k) != np_.get(k))
    if diff:
        shown = "; ".join(f"{k}: base {_values(bp.get(k))}, new {_values(np_.get(k))}" for k in diff[:4])
        out.append(f"the parameters differ: {shown}")
    return out


def _params_by_name(manifest: Manifest) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for c in manifest.cells:
        for k, v in c.params.items():
            out.setdefault(k, set()).add(orjson.dumps(v).decode())
    return out


def _values(values: set[str] | None) -> str:
    return ", ".join(sorted(values)) if values else "not set"


def _load(run_dir: Path, manifest: Manifest, scorer: str) -> pd.DataFrame:
    import pandas as pd
    import pyarrow.parquet as pq

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
    names = pq.read_schema(run_dir / RESULTS).names
    if f"pass_{scorer}" not in names:
        have = sorted(n[5:] for n in names if n.startswith("pass_"))
        raise ConfigError(
            f"{run_dir}: no scorer {scorer!r} in {RESULTS} (has: {', '.join(have) or 'none'}); "
            "add it to the experiment and run: evalrun score RUN_DIR"
        )
    wanted += [n for n in names if n.startswith(DATA_PREFIX)]
    df = pd.read_parquet(run_dir / RESULTS, columns=[c for c in wanted if c in set(names)])
    keys = cell_keys(manifest)
    df["cell_key"] = df.cell_id.map(keys)
    df["choice_index"] = df.choice_index.fillna(0).astype("int64")
    df["passed"] = df[f"pass_{scorer}"].fillna(False).astype(bool)
    df["score"] = df[f"score_{scorer}"]
    return df


def verdict(delta: float, p_value: float, gate: Gate, flips: int) -> str:
    """A cell's verdict. Not significant is not "unchanged": a +20-point change on 10 items
    reads "no significant change", and the interval shows how wide the doubt is."""
    if flips == 0:
        return "no change"
    if p_value >= gate.alpha:
        return "no significant change"
    if delta < -gate.fail_on_drop:
        return "regressed"
    if delta > gate.fail_on_drop:
        return "improved"
    return "within threshold"


def _side_stats(matched: pd.DataFrame) -> dict[str, float]:
    """Per-request figures over one side's answers to the matched rows only (choice 0 carries a
    request's usage and cost): a baseline with fewer rows must not make a cell look cheaper."""
    req = matched[matched.choice_index == 0]
    cost = req.get("cost_total")
    return {
        "latency_p50_s": req.latency_s.quantile(0.5),
        "latency_p95_s": req.latency_s.quantile(0.95),
        "tokens_per_request": req.total_tokens.mean(),
        "cost_per_item": math.nan if cost is None or cost.isna().all() else float(cost.fillna(0).mean()),
    }


COUNTS = (
    "base_items",
    "new_items",
    "matched",
    "only_base_items",
    "only_new_items",
    "base_answers",
    "new_answers",
    "pass_to_fail",
    "fail_to_pass",
    "changed_rows",
    *(f"{side}_{cls}" for side in ("base", "new") for cls in ("stable_pass", "flaky", "stable_fail")),
)


def _check_min_passes(gate: Gate, b: pd.DataFrame, n: pd.DataFrame, cell: str) -> None:
    """gate.min_passes must be reachable: k answers of a row must exist to pass k of them."""
    if gate.min_passes is None:
        return
    most = int(min(b.groupby("row_id").size().max(), n.groupby("row_id").size().max()))
    if gate.min_passes > most:
        raise ConfigError(
            f"gate.min_passes: {gate.min_passes} is more than the {most} answer(s) per row (repeats × choices) "
            f"of the cell {cell}; allowed: 1 to {most}"
        )


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
    warnings = _differences(base_m, new_m, base, new)
    params = [c.params for c in base_m.cells + new_m.cells]
    varying = {k for k in {k for p in params for k in p} if len({orjson.dumps(p.get(k)) for p in params}) > 1}
    rows: list[dict[str, Any]] = []
    flips: list[pd.DataFrame] = []
    for key in sorted(set(base.cell_key.dropna()) | set(new.cell_key.dropna())):
        row, cell_flips = _compare_key(key, base[base.cell_key == key], new[new.cell_key == key], gate, varying)
        if cell_flips is not None and len(cell_flips):
            flips.append(cell_flips)
        rows.append(row)
    cells = pd.DataFrame(rows)
    for c in COUNTS:  # counts stay whole numbers (a one-sided cell has none: <NA>, not NaN)
        if c in cells:
            cells[c] = cells[c].astype("Int64")
    _decided_early(cells, new_m)
    warnings += _coverage_warnings(cells)
    flip_df = pd.concat(flips, ignore_index=True) if flips else pd.DataFrame(columns=list(FLIP_COLUMNS))
    return Comparison(base_dir, new_dir, scorer, gate, cells, flip_df, warnings)


def _decided_early(cells: pd.DataFrame, new_m: Manifest) -> None:
    """A cell the new run settled early (--stop-when-decided) keeps the verdict of its
    always-valid test: a fixed-size test read at a data-dependent stop is not valid."""
    decided = (new_m.decided or {}).get("cells") or {}
    keys = cell_keys(new_m)
    for cell_id, d in decided.items():
        said, key = d.get("verdict"), keys.get(cell_id)
        if not said or key is None or cells.empty:
            continue
        hit = cells.cell_key == key
        if said == "regressed":
            cells.loc[hit, "verdict"] = "regressed"
        else:  # the drop is known to be under the threshold
            cells.loc[hit & (cells.verdict == "regressed"), "verdict"] = "no significant change"
        cells.loc[hit, "decided_after_rows"] = d.get("rows")


def _compare_key(
    key: str, b: pd.DataFrame, n: pd.DataFrame, gate: Gate, varying: set[str]
) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """One cell's comparison row and its flipped rows (None for a cell only one run has)."""
    row: dict[str, Any] = {
        "cell": _label(key, varying),
        "cell_key": key,
        "base_items": b.row_id.nunique(),
        "new_items": n.row_id.nunique(),
    }
    if b.empty or n.empty:
        row["verdict"] = "only in new" if b.empty else "only in base"
        return row, None
    _check_min_passes(gate, b, n, row["cell"])
    one = compare_cell(row["cell"], b, n, gate.min_passes)
    row.update(one.figures)
    row.update({"base_errors": int((b.status == "error").sum()), "new_errors": int((n.status == "error").sum())})
    k, both = row["matched"], set(b.row_id) & set(n.row_id)
    for side, frame in (("base", b), ("new", n)):
        row.update({f"{side}_{what}": v for what, v in _side_stats(frame[frame.row_id.isin(both)]).items()})
    for what in ("latency_p50_s", "latency_p95_s", "tokens_per_request", "cost_per_item"):
        row[f"delta_{what}"] = row[f"new_{what}"] - row[f"base_{what}"]
    row["verdict"] = verdict(row["delta"], row["p_value"], gate, row["changed_rows"]) if k else "no matched items"
    return row, one.flips


def _coverage_warnings(cells: pd.DataFrame) -> list[str]:
    """What was not compared: cells only one run has, items only one side of a cell has."""
    warnings = []
    if len(cells):
        for side in ("base", "new"):
            names = list(cells.cell[cells.verdict == f"only in {side}"])
            if names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                warnings.append(f"{len(names)} cell(s) only in {side}, not compared: {'; '.join(names[:3])}{more}")
    if "only_base_items" not in cells:  # no cell in common: no item counts at all
        return warnings
    partial = cells[(cells.only_base_items.fillna(0) > 0) | (cells.only_new_items.fillna(0) > 0)]
    if "decided_after_rows" in partial:  # cells the run stopped sending to on purpose
        partial = partial[partial.decided_after_rows.isna()]
    if len(partial):
        sides = [(int(partial[f"only_{side}_items"].sum()), side) for side in ("base", "new")]
        counts = " and ".join(f"{n} item(s) only in {side}" for n, side in sides if n)
        warnings.append(f"{counts}, in {len(partial)} cell(s): deltas use the matched items only")
    return warnings


def _first_scorer(manifest: Manifest) -> str | None:
    """The gate's scorer, else the first of those the results hold: `evalrun score` records
    the scorers it wrote in the manifest's `scorers`, over those the run was configured with."""
    cfg = manifest.config or {}  # the experiment's YAML
    gate = (cfg.get("gate") or {}).get("scorer")
    if gate:
        return str(gate)
    scorers = manifest.scorers if manifest.scorers is not None else cfg.get("scorers")
    for s in scorers or []:
        return str(s.get("name") or s.get("type"))
    return None
