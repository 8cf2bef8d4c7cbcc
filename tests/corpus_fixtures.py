"""Small labelled corpora in other scripts, made here (no download): the "your own data" tests.

``chinese_news`` writes short Chinese texts without spaces, with a few Latin words and digits
mixed in, in three classes named in Chinese. A class is told by its words, which only a
tokenizer that cuts Han text into characters and bigrams can see: the ASCII-only rule reads
nothing but the Latin words, which every class shares.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

CLASSES = {
    "体育": "足球 比赛 球队 进球 教练 冠军 联赛 球员 门将 主场 裁判 射门 篮球 奥运 赛季",
    "财经": "股票 市场 银行 投资 利率 基金 债券 汇率 经济 上涨 下跌 财报 央行 通胀 资本",
    "科技": "电脑 软件 程序 网络 数据 芯片 手机 算法 人工智能 服务器 系统 开源 代码 云端 模型",
}
FILLER = "今天 我们 认为 这个 非常 已经 可能 因为 所以 但是 还有 一些 关于 表示 记者 报道".split()  # noqa: SIM905
SHARED_LATIN = ["news", "2024", "AI", "report", "OK", "v2"]


def chinese_texts(per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) rows: each text mixes its class's words with filler and Latin words."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in CLASSES.items():
        topic = words.split()
        for _ in range(per_class):
            picks = list(rng.choice(topic, size=4)) + list(rng.choice(FILLER, size=5))
            picks += list(rng.choice(SHARED_LATIN, size=2))
            rng.shuffle(picks)
            # Chinese runs without spaces; a Latin word keeps a space on either side.
            text = "".join(w if not w.isascii() else f" {w} " for w in picks).strip()
            rows.append((text + "。", label))
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_csv(path: Path, rows: list[tuple[str, str]], *, extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        columns = ["text", "label", *(extra or {})]
        writer.writerow(columns)
        for i, (text, label) in enumerate(rows):
            writer.writerow([text, label, *(values[i] for values in (extra or {}).values())])
    return path


def write_class_folders(root: Path, rows: list[tuple[str, str]]) -> Path:
    """scikit-learn's ``load_files`` layout: ``root/<class>/<n>.txt``."""
    for i, (text, label) in enumerate(rows):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return root
