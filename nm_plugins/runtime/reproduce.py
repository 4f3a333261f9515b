"""What every ``reproduce`` entry point shares: rows chosen by an environment variable, the paper's claims judged on
per-seed values (``nm_plugins.verdicts``) and the threshold check, printed and appended to results.md."""
from __future__ import annotations

import os
from pathlib import Path

from nm_plugins.runtime.project import project_root
from nm_plugins.runtime.results import append_text


def run_check(results_json: Path, thresholds: Path) -> int:
    """Print the threshold table of ``nm_plugins.verdicts.check``, append it to results.md next to results.json; its exit status."""
    import contextlib
    import io
    from nm_plugins.verdicts.check import main as check_main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = check_main([str(results_json), str(thresholds)])
    print(out.getvalue(), end="")
    md = results_json.with_name("results.md")
    if md.is_file():
        text = out.getvalue().replace(str(project_root()) + "/", "")
        append_text(md, f"\n## Threshold check (exit status {status})\n\n```\n{text}```\n")
    return status


def claim_rows(per_seed: dict, thresholds: Path) -> list:
    """The paper's claims of a thresholds file evaluated on per-seed values (``nm_plugins.verdicts.claims``)."""
    from nm_plugins.runtime.config import load_yaml
    from nm_plugins.verdicts.claims import evaluate_claims
    return evaluate_claims(per_seed, (load_yaml(thresholds.read_text()) or {}).get("claims", []))


def write_claims(rows: list, results_dir: Path) -> list:
    """Append the claims table to results.md and draw claims.png; the plot paths (none without claims)."""
    if not rows:
        return []
    from nm_plugins.verdicts.claims import markdown_claims, plot_claims
    md = results_dir / "results.md"
    append_text(md, "\n## Paper claims: paired differences over seeds (same seed = same init and "
                    "data order), 95% t-interval\n\n" + markdown_claims(rows))
    return [plot_claims(rows, results_dir / "claims.png")]


def select_configs(rows: list, env: str, prog: str) -> list:
    """``rows`` (config paths), or those the comma-separated names in environment variable ``env`` select, in that
    order; an unknown name stops ``prog`` with the known ones."""
    wanted = [w.strip() for w in os.environ.get(env, "").split(",") if w.strip()]
    if not wanted:
        return rows
    names = {p.stem: p for p in rows}
    missing = [w for w in wanted if w not in names]
    if missing:
        raise SystemExit(f"{prog}: {env} names unknown configs {missing}; known: {sorted(names)}")
    return [names[w] for w in wanted]
