"""`compare`: two models on the same prompts, a paired test per prompt group against the reference."""

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from medtextseg.cli import app
from medtextseg.study.prompt_pairs import paired_prompt_comparison
from medtextseg.utils.errors import MedTextSegError


def records(dice: dict[tuple[str, str], float], group_of=lambda prompt: prompt.split()[0]) -> list[dict]:
    return [{"case": case, "prompt": prompt, "group": group_of(prompt), "dice": value}
            for (case, prompt), value in dice.items()]


def evaluations(seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = [(f"case{c}", f"{group} prompt {p}") for c in range(6) for group in ("single", "anatomy") for p in range(2)]
    base = {key: float(rng.uniform(0.4, 0.8)) for key in keys}
    better = {key: value + (0.1 if key[1].startswith("single") else 0.0) + float(rng.normal(0, 0.02))
              for key, value in base.items()}
    same = dict(base)
    return {"base": records(base), "better": records(better), "same": records(same)}, base, better


def test_pairs_by_case_and_prompt_and_tests_each_group_as_scipy_does():
    data, base, better = evaluations()
    rows = {(r["model"], r["group"]): r for r in paired_prompt_comparison(data)}
    single = rows[("better", "single")]
    keys = [k for k in base if k[1].startswith("single")]
    assert single["n"] == len(keys) == 12 and single["reference"] == "base"
    difference = np.array([better[k] - base[k] for k in keys])
    assert single["mean_difference"] == pytest.approx(difference.mean())
    assert single["t_p"] == pytest.approx(stats.ttest_rel([better[k] for k in keys], [base[k] for k in keys]).pvalue)
    assert single["t_p"] < 1e-6 and single["ci_low"] > 0.05  # a real gain of 0.1 is found
    assert rows[("better", "anatomy")]["t_p"] > 0.01  # noise alone is not
    assert rows[("same", "overall")]["mean_difference"] == 0 and rows[("same", "overall")]["wilcoxon_p"] == 1.0
    assert rows[("better", "overall")]["n"] == 24
    # Holm over the two models compared with the reference, per group
    raw = sorted([rows[("better", "single")]["wilcoxon_p"], rows[("same", "single")]["wilcoxon_p"]])
    assert sorted(r["wilcoxon_p_holm"] for (m, g), r in rows.items() if g == "single") == \
        pytest.approx([min(1.0, 2 * raw[0]), max(min(1.0, 2 * raw[0]), raw[1])])


def test_the_order_of_records_does_not_matter_and_disjoint_evaluations_are_refused():
    data, _, _ = evaluations()
    shuffled = {name: list(reversed(rows)) for name, rows in data.items()}
    assert paired_prompt_comparison(shuffled) == paired_prompt_comparison(data)
    other_split = [{**r, "case": "x" + r["case"]} for r in data["better"]]
    with pytest.raises(MedTextSegError, match="share no"):
        paired_prompt_comparison({"base": data["base"], "other": other_split})
    with pytest.raises(MedTextSegError, match="at least two"):
        paired_prompt_comparison({"base": data["base"]})


def test_compare_writes_the_paired_table_when_evaluations_kept_their_prompts(tmp_path):
    data, _, _ = evaluations()
    for name in ("base", "better"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "metrics_per_prompt.json").write_text(json.dumps(data[name]))
        groups = sorted({r["group"] for r in data[name]})
        summary = [{"group": g, "n": 12, "dice_mean": float(np.mean([r["dice"] for r in data[name]
                                                                      if r["group"] == g]))} for g in groups]
        (folder / "summary.json").write_text(json.dumps(summary))
    result = CliRunner().invoke(app, ["compare", f"base={tmp_path / 'base'}", f"better={tmp_path / 'better'}",
                                      "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "| better | base | single | 12 |" in result.output
    saved = json.loads((tmp_path / "report" / "paired_dice.json").read_text())
    assert {row["group"] for row in saved} == {"anatomy", "single", "overall"}
    assert (tmp_path / "report" / "paired_dice.csv").read_text().startswith("model,reference,group,n,")
