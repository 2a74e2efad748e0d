"""Reference numbers from the TIES-Merging paper (Yadav et al. 2023), shown beside the study's
results. Second-hand: transcribed from notes on the paper (see the project's ties-spec.md), not
from the PDF; average accuracy in %, with a validation set."""

# Table 1: method -> setting -> average accuracy
TABLE1 = {
    "fine-tuned": {"IA3 / T0-3B": 71.4, "T5-base": 82.8, "T5-large": 88.8, "ViT-B/32": 90.5, "ViT-L/14": 94.2},
    "multitask": {"IA3 / T0-3B": 73.1, "T5-base": 83.6, "T5-large": 88.1, "ViT-B/32": 88.9},
    "Fisher": {"IA3 / T0-3B": 62.2, "T5-base": 68.9, "T5-large": 64.6, "ViT-B/32": 68.3, "ViT-L/14": 82.2},
    "RegMean": {"IA3 / T0-3B": 58.0, "T5-base": 71.2, "T5-large": 73.2, "ViT-B/32": 71.8, "ViT-L/14": 83.7},
    "task arithmetic": {"IA3 / T0-3B": 63.9, "T5-base": 73.2, "T5-large": 73.3, "ViT-B/32": 70.1, "ViT-L/14": 84.5},
    "TIES": {"IA3 / T0-3B": 66.4, "T5-base": 73.9, "T5-large": 76.9, "ViT-B/32": 73.6, "ViT-L/14": 86.0},
}

# Ablation (T5-base, IA3): removing one step of TIES at a time
ABLATION = {
    "TIES": {"T5-base": 74.5, "IA3": 70.7},
    "without trim": {"T5-base": 73.0, "IA3": 70.6},
    "without elect": {"T5-base": 73.1, "IA3": 69.6},
    "without disjoint mean": {"T5-base": 72.6, "IA3": 67.5},
    "without scaling (λ = 1)": {"T5-base": 72.0, "IA3": 65.5},
}

# Oracle sign (IA3, Table 1 setting): TIES 66.4 → 72.0 with the multitask model's sign vector
ABLATION["TIES with the multitask model's signs (oracle)"] = {"IA3": 72.0}
