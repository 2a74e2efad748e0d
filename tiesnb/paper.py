"""Reference numbers from the TIES-Merging paper (Yadav et al., NeurIPS 2023), shown beside the
study's results — with where each comes from.

Every number here is **second-hand**: transcribed from the project's notes on the paper
(``shared/reference/ties-spec.md``), not read off the paper itself — the paper's text was not
reachable from the machine this study was built on, so none could be checked. ``SOURCE`` says so
for every table, and the study's tables and README repeat it. Rows the paper has but the notes do
not carry (averaging, the no-validation rows) are listed with no numbers: they print blank, never
as a number we made up.

Table 1 reports average accuracy (%) *with a validation set* (hyperparameters chosen on it); the
ablation table reports the average on the *validation set itself*; the oracle-sign number is the
IA3 setting of Table 1.
"""

SECOND_HAND = "second-hand (transcribed from notes on the paper; not checked against its text)"

# Table 1: method -> setting -> average accuracy (%), with a validation set
TABLE1 = {
    "fine-tuned": {"IA3 / T0-3B": 71.4, "T5-base": 82.8, "T5-large": 88.8, "ViT-B/32": 90.5, "ViT-L/14": 94.2},
    "multitask": {"IA3 / T0-3B": 73.1, "T5-base": 83.6, "T5-large": 88.1, "ViT-B/32": 88.9},
    "averaging": {},
    "Fisher": {"IA3 / T0-3B": 62.2, "T5-base": 68.9, "T5-large": 64.6, "ViT-B/32": 68.3, "ViT-L/14": 82.2},
    "RegMean": {"IA3 / T0-3B": 58.0, "T5-base": 71.2, "T5-large": 73.2, "ViT-B/32": 71.8, "ViT-L/14": 83.7},
    "task arithmetic": {"IA3 / T0-3B": 63.9, "T5-base": 73.2, "T5-large": 73.3, "ViT-B/32": 70.1, "ViT-L/14": 84.5},
    "task arithmetic (no validation)": {},
    "TIES": {"IA3 / T0-3B": 66.4, "T5-base": 73.9, "T5-large": 76.9, "ViT-B/32": 73.6, "ViT-L/14": 86.0},
    "TIES (no validation)": {},
}

# Ablation (T5-base, IA3): TIES without one step at a time — averages on the validation set
ABLATION = {
    "TIES": {"T5-base": 74.5, "IA3": 70.7},
    "without trim": {"T5-base": 73.0, "IA3": 70.6},
    "without elect": {"T5-base": 73.1, "IA3": 69.6},
    "without disjoint mean": {"T5-base": 72.6, "IA3": 67.5},
    "without scaling (λ = 1)": {"T5-base": 72.0, "IA3": 65.5},
}

# Oracle sign (IA3, the Table 1 setting): TIES 66.4 → 72.0 with the multitask model's sign vector
ORACLE = {"TIES": 66.4, "TIES with the multitask model's signs (oracle)": 72.0}

# The zero-shot ViT-B/32 average over the 8 vision tasks, approximate (~48; task arithmetic's paper
# reports it, TIES's Table 1 does not): the reference of the paper's share of the fine-tuning gain
# that a merge recovers, (merge − zero-shot) / (fine-tuned − zero-shot)
ZERO_SHOT = {"ViT-B/32": 48.0}


def recovered(method: str, setting: str = "ViT-B/32") -> float | None:
    """The share (%) of the fine-tuning gain over the zero-shot model that the paper's merge keeps."""
    m, ft, zs = table1(method, setting), table1("fine-tuned", setting), ZERO_SHOT.get(setting)
    return None if m is None or ft is None or zs is None else 100 * (m - zs) / (ft - zs)


SOURCE = {"TABLE1": SECOND_HAND, "ABLATION": SECOND_HAND, "ORACLE": SECOND_HAND, "ZERO_SHOT": SECOND_HAND}


def table1(method: str, setting: str) -> float | None:
    """The paper's Table 1 average for a method and setting, or None (printed blank)."""
    return TABLE1.get(method, {}).get(setting)


def ablation(row: str, setting: str) -> float | None:
    return ABLATION.get(row, {}).get(setting)
