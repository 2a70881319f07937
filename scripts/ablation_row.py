"""Print one markdown row of the default model's ablation table from the JSON files that
scripts/ablation_eval.sh wrote in WORK (each figure as 60x80 / 224 photos).
Usage: python scripts/ablation_row.py WORK [NAME]"""
import json
import os
import sys


def main(work: str, name: str) -> None:
    ev = {f: json.load(open(os.path.join(work, f"eval-{f}.json"))) for f in ("60x80", "224")}
    agree = json.load(open(os.path.join(work, "agreement.json")))

    def both(get) -> str:
        return " / ".join(f"{get(ev[f]):.3f}" for f in ("60x80", "224"))

    kinds = lambda k: (lambda r: r["detection"]["kinds"][k]["roc_auc"])   # noqa: E731
    cells = [name, both(kinds("colour")), both(kinds("article_type")), both(kinds("image")),
             both(lambda r: r["detection"]["false_positive_rate"]),
             both(lambda r: r["detection"]["overall"]["recall"]),
             both(lambda r: r["detection"]["overall"]["precision_at_2pct"]),
             both(lambda r: r["detection"]["kinds"]["colour"]["recall_at_0.01_fpr"]),
             both(lambda r: r["retrieval"]["image_to_text_R@1"]),
             f"{agree['all']['verdict_agreement']:.3f} ({agree['all']['mean_abs_diff_p_violation']:.3f})"]
    print("| run | colour AUC | article AUC | image AUC | FPR | recall | precision@2% | colour recall@1% FPR "
          "| R@1 i->t | agreement (mean abs. diff.) |")
    print("|---" * len(cells) + "|")
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.basename(os.path.normpath(sys.argv[1])))
