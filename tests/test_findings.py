"""The README's findings are rendered from the committed CSVs: the README must equal what they
give (no number drifts), and the verdicts follow the two-interval rule."""

import math

from tiesnb import findings, paths


def test_readme_findings_equal_what_the_csvs_give():
    readme = (paths.ROOT / "README.md").read_text()
    blocks = findings.MARK.findall(readme)
    assert len(blocks) >= 5  # the tables and the claims are generated, not typed
    assert findings.render(readme) == readme, "run `tiesnb findings` (the README differs from figures/*.csv)"


def test_claim_cells_need_both_intervals():
    nan = math.nan
    assert findings.claim_cell(5.1, 2.4, 8.5, 1.0, 9.0, +1) == "yes: +5.1 [+2.4, +8.5]"
    assert findings.claim_cell(-1.2, -2.6, -0.2, -3.0, -0.1, +1) == "no, the reverse: -1.2 [-2.6, -0.2]"
    # the bootstrap excludes 0, the seed-level t interval does not: not separated
    assert findings.claim_cell(5.1, 2.4, 8.5, -2.8, 13.0, +1) == "not separated: +5.1 [+2.4, +8.5]"
    assert findings.claim_cell(5.1, 2.4, 8.5, nan, nan, +1) == "yes (one seed): +5.1 [+2.4, +8.5]"
    assert findings.claim_cell(5.1, 2.4, 8.5, 1.0, 9.0, +1, holds=False) == "yes: +5.1 [+2.4, +8.5], not with every task left out"
