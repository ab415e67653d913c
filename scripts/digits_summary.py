"""Collect scripts/digits.sh's stage outputs into one Markdown table (stdout) and summary.json."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/digits")
models = sys.argv[2:] or ["ddpm", "vae", "gan"]
read = lambda name: json.loads((out / f"{name}.json").read_text())
seconds = lambda name: int((out / f"{name}.seconds").read_text())

rows = []
for model in models:
    report = json.loads(Path(read(f"eval-{model}")["report"]).read_text())
    m = report["metrics"]
    rows.append({"model": model, "fid": m["fid"], "fid_real_floor": m["fid_real_floor"], "kid": m["kid"], "kid_std": m["kid_std"],
                 "confident_share": m["confident_share"], "min_class_share": m["min_class_share"],
                 "psnr": m.get("psnr"), "ssim": m.get("ssim"), "train_seconds": seconds(f"train-{model}"),
                 "images_per_s": read(f"train-{model}").get("images_per_s"), "feature_space": report["feature_space"],
                 "grid": read(f"generate-{model}")["grid"], "class_shares": report["class_shares"]})
(out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
print(f"feature space: {rows[0]['feature_space']}; floor = FID of the held-out real digits against real training digits")
print("| model | FID (real floor) | KID | recognised (p ≥ 0.9) | smallest class share | train time |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['model']} | {r['fid']:.2f} ({r['fid_real_floor']:.2f}) | {r['kid']:.2f} ± {r['kid_std']:.2f} | "
          f"{r['confident_share']:.0%} | {r['min_class_share']:.1%} | {r['train_seconds'] // 60} min {r['train_seconds'] % 60} s |")
for r in rows:
    if r["psnr"] is not None:
        print(f"{r['model']} reconstructions of the held-out digits: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}")
