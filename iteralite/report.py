"""results/report.html: one self-contained page (plots embedded as PNG data URIs, no external request)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from . import naming, rulegraph  # noqa: E402
from .artifacts import read_json, write_text  # noqa: E402


def figure_html(fig, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    text = html.escape(caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{text}"><figcaption>{text}</figcaption></figure>'


# Human units for every table: column -> (header with its unit, formatter). Columns not listed print as they are.
UNITS = {
    "params": ("parameters", lambda v: f"{v:,.0f}"),
    "file_bytes": ("file (MB)", lambda v: f"{v / 1e6:,.2f}"),
    "test_ppl": ("test perplexity", lambda v: f"{v:,.2f}"),
    "test_tokens": ("test tokens", lambda v: f"{v:,.0f}"),
    "tokens_per_s": ("throughput (k tokens/s)", lambda v: f"{v / 1e3:,.1f}"),
    "step_latency_ms": ("step latency (ms)", lambda v: f"{v:,.2f}"),
    "forward_ms": ("batched forward (ms)", lambda v: f"{v:,.2f}"),
    "peak_mem_mb": ("peak memory (MiB)", lambda v: f"{v:,.1f}"),
    "weight_mem_mb": ("weights in memory (MiB)", lambda v: f"{v:,.2f}"),
    "serve_rss_mb": ("serving process peak RSS (MiB)", lambda v: f"{v:,.0f}"),
    "seed": ("seed", lambda v: f"{v:.0f}"),
    "served_clients": ("served: clients", lambda v: f"{v:.0f}"),
    "served_tokens_per_s": ("served: k tokens/s", lambda v: f"{v / 1e3:,.2f}"),
    "served_token_p95_ms": ("served: p95 ms per token", lambda v: f"{v:,.2f}"),
    "token_p50_ms": ("p50 ms per token", lambda v: f"{v:,.2f}"),
    "token_p95_ms": ("p95 ms per token", lambda v: f"{v:,.2f}"),
    "server_peak_rss_mb": ("server peak RSS (MB)", lambda v: f"{v:,.0f}"),
    "seconds": ("seconds", lambda v: f"{v:,.2f}"),
}


def display(frame: pd.DataFrame, drop=()) -> pd.DataFrame:
    """A table as text in human units: thousands separators, MB, k tokens/s, units in the headers; empty cells for
    missing values, never NaN or None."""
    shown = frame.drop(columns=[c for c in drop if c in frame.columns]).copy()
    for column in shown.columns:
        header, fmt = UNITS.get(column, (column, None))
        values = shown[column]
        if fmt is None and pd.api.types.is_float_dtype(values):
            fmt = "{:,.3g}".format
        shown[column] = [("" if pd.isna(v) else fmt(v) if fmt else str(v)) for v in values.astype(object)]
        shown = shown.rename(columns={column: header})
    return shown


def table_html(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t")


def parameter_plot(analysis: dict) -> str:
    frame = pd.DataFrame(analysis["by_component"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.barplot(frame, y="component", x="params", ax=ax, color="#4c72b0")
    for i, row in frame.iterrows():
        ax.text(row["params"], i, f" {row['percent']:.1f}%", va="center", fontsize=8)
    ax.set_xlabel("parameters")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
    return figure_html(fig, f"Parameters by component ({analysis['total_params']:,} in all): the tied token "
                            "embedding holds the largest share; width pruning shrinks it, and so does removing "
                            "rows no token reaches (an imported model's).")


def importance_plot(paths: list[str]) -> str:
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        frame["criterion"] = naming.split_seed(os.path.basename(path).removesuffix(".csv"))[0]
        frame["score"] = frame.groupby("group")["score"].transform(lambda s: s / (s.abs().max() or 1))
        frames.append(frame)
    frame = pd.concat(frames)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.boxplot(frame, x="kind", y="score", hue="criterion", ax=ax, fliersize=1)
    ax.set_ylabel("score / group max")
    return figure_html(fig, "Importance scores per group kind and criterion, each group scaled to its maximum; "
                            "random is the control (whole experts use the routing criterion unless random).")


def kept_heatmap(paths: list[str]) -> str:
    rows = []
    for path in paths:
        stats = read_json(path)
        for g in stats["groups"]:
            rows.append({"variant": stats["variant"], "group": g["group"], "kept": g["kept"] / g["total"]})
    frame = pd.DataFrame(rows).pivot(index="variant", columns="group", values="kept")
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * frame.shape[1]), 1 + 0.5 * frame.shape[0]))
    sns.heatmap(frame, vmin=0, vmax=1, cmap="viridis", ax=ax, cbar_kws={"label": "kept fraction"})
    ax.set_xlabel("")
    return figure_html(fig, "Kept fraction of every pruning group per variant (width, SSM channels per layer, "
                            "hidden units per expert, experts per layer, whole blocks, table rows no token "
                            "reaches).")


def curves_plot(baseline_curve: str, finetune_curves: list[str]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    base = pd.read_csv(baseline_curve)
    if len(base):
        axes[0].plot(base["step"], base["train_loss"], lw=0.8, label="train loss")
        val = base.dropna(subset=["val_ppl"])
        axes[0].plot(val["step"], val["val_ppl"].map(math.log), "o-", label="log validation perplexity")
    axes[0].set(title="baseline", xlabel="step")
    axes[0].legend(fontsize=8)
    for path in finetune_curves:
        curve = pd.read_csv(path).dropna(subset=["val_ppl"])
        axes[1].plot(curve["step"], curve["val_ppl"], "o-", label=os.path.basename(os.path.dirname(path)))
    axes[1].set(title="fine-tuning", xlabel="step", ylabel="validation perplexity")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return figure_html(fig, "Training curves: the baseline's loss and validation perplexity, and the validation "
                            "perplexity of every fine-tune (the 'dense' curve is the equal-budget control).")


def pareto_front(frame: pd.DataFrame, cost: str = "file_bytes", lower_is_better: bool = True) -> pd.DataFrame:
    """Models no other model beats on both `cost` (file size, parameters; or tokens/s, where higher is better) and
    perplexity."""
    ordered = frame.sort_values([cost, "test_ppl"], ascending=[lower_is_better, True])
    front, best = [], math.inf
    for _, row in ordered.iterrows():
        if row["test_ppl"] < best:
            front.append(row)
            best = row["test_ppl"]
    return pd.DataFrame(front)


def frontier_plot(families: pd.DataFrame) -> str:
    """Mean test perplexity of the baseline and every fine-tuned recipe against parameters and against throughput,
    with the Pareto front of each."""
    frame = families[families["stage"].isin(["baseline", "finetuned"])].copy()
    frame["recipe"] = frame["criterion"] + frame["method"].map(lambda m: f" ({m})" if m else "")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, cost, label, lower in ((axes[0], "params", "parameters", True),
                                   (axes[1], "tokens_per_s", "tokens/s (batched forward)", False)):
        ax.errorbar(frame[cost], frame["test_ppl"], yerr=[frame["test_ppl"] - frame["ppl_min"],
                                                          frame["ppl_max"] - frame["test_ppl"]],
                    fmt="none", ecolor="#999", lw=1)
        sns.scatterplot(frame, x=cost, y="test_ppl", hue="recipe", style="target", s=60, ax=ax,
                        legend=ax is axes[1])
        front = pareto_front(frame, cost, lower)
        ax.plot(front[cost], front["test_ppl"], "k--", lw=1, label="Pareto front")
        ax.set(xlabel=label, ylabel="test perplexity (mean over seeds)")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k"))
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return figure_html(fig, "The frontier: every fine-tuned recipe (mean over its seeds, bars from the lowest to the "
                            "highest seed) against its parameters and its throughput; the dashed lines join the "
                            "recipes no other beats on both axes.")


def tradeoff_plot(summary: pd.DataFrame) -> str:
    frame = summary.dropna(subset=["test_ppl"]).copy()
    frame["size_mb"] = frame["file_bytes"] / 1e6
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.scatterplot(frame, x="size_mb", y="test_ppl", hue="stage", style="criterion", s=70, ax=ax)
    front = pareto_front(frame)
    ax.plot(front["file_bytes"] / 1e6, front["test_ppl"], "k--", lw=1, label="Pareto front")
    ax.set(xscale="log", yscale="log", xlabel="file size (MB)", ylabel="test perplexity")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers on the log axes
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return figure_html(fig, "Size against test perplexity for every model; the dashed line joins the models that "
                            "no other model beats on both.")


def speed_plot(speed: pd.DataFrame, latency: pd.DataFrame) -> str:
    """Throughput per model, and per-token latency against context in one small panel per model family (the
    baseline, the pruned, fine-tuned and INT4 models of each criterion), so no two lines hide each other."""
    fig, ax = plt.subplots(figsize=(7, 0.4 + 0.3 * len(speed)))
    sns.barplot(speed.assign(k=speed["tokens_per_s"] / 1e3), y="model", x="k", ax=ax, color="#55a868")
    ax.set(xlabel="throughput (k tokens/s, batched forward)", ylabel="")
    parts = [figure_html(fig, "Batched throughput of every model, measured side by side in one process.")]
    latency = latency.copy()
    latency["panel"] = latency["model"].map(lambda m: naming.describe(m)["criterion"])
    latency["stage"] = latency["model"].map(lambda m: m.partition("/")[0])
    panels = list(dict.fromkeys(latency["panel"]))
    grid = sns.relplot(latency, x="context", y="latency_ms", hue="stage", col="panel", col_order=panels,
                       kind="line", marker="o", height=2.6, aspect=1.1, facet_kws={"sharey": True})
    grid.set_axis_labels("context length (tokens)", "ms per generated token")
    grid.set_titles("{col_name}")
    sns.move_legend(grid, "upper left", bbox_to_anchor=(1.0, 0.9))
    parts.append(figure_html(grid.figure, "Per-token generation latency against context length, one panel per "
                                          "criterion (the dense panel holds the baseline, the control and their "
                                          "INT4 copies): the SSM state is O(1), so the lines stay flat."))
    return "".join(parts)


DEPLOY_COLUMNS = ["model", "runtime", "test_ppl", "tokens_per_s", "step_latency_ms", "weight_mem_mb", "serve_rss_mb",
                  "file_bytes"]


def deployment_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The exported models in torch and in ONNX Runtime, side by side."""
    exported = summary[summary["runtime"] == "onnxruntime"]["model"]
    frame = summary[summary["model"].isin(exported)]
    return frame.sort_values(["model", "runtime"], ascending=[True, False])[DEPLOY_COLUMNS]


def deployment_plot(table: pd.DataFrame) -> str:
    """Latency per generated token and weight memory of every exported model, per runtime."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.8 + 0.45 * table["model"].nunique()), sharey=True)
    sns.barplot(table, y="model", x="step_latency_ms", hue="runtime", ax=axes[0], legend=False)
    axes[0].set(xlabel="ms per generated token (batch 1)", ylabel="")
    sns.barplot(table, y="model", x="weight_mem_mb", hue="runtime", ax=axes[1])
    axes[1].set(xlabel="weights in memory (MiB)", ylabel="")
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    return figure_html(fig, "Every exported model in torch and in ONNX Runtime, measured side by side in one "
                            "process: latency per generated token at batch 1 and the weights each runtime holds.")


def deployment_findings(table: pd.DataFrame) -> list[str]:
    """Sentences from the deployment table: each runtime against the other, INT4 against its float32 source."""
    by = table.set_index(["model", "runtime"])
    out = []
    for model in dict.fromkeys(table["model"]):
        if (model, "torch") not in by.index:
            continue
        t, o = by.loc[(model, "torch")], by.loc[(model, "onnxruntime")]
        out.append(f"{model} in ONNX Runtime: {o['step_latency_ms'] / t['step_latency_ms']:.2f}x torch's latency "
                   f"per token, {o['tokens_per_s'] / t['tokens_per_s']:.2f}x its batched throughput, a serving "
                   f"process of {o['serve_rss_mb']:.0f} MiB peak RSS against torch's {t['serve_rss_mb']:.0f} MiB, "
                   f"test perplexity {o['test_ppl']:.2f} (torch {t['test_ppl']:.2f}).")
        source = model.removeprefix("int4-")
        if source != model and (source, "onnxruntime") in by.index:
            f = by.loc[(source, "onnxruntime")]
            out.append(f"Its 4-bit weights stay 4-bit in ONNX Runtime: {o['weight_mem_mb']:.2f} MiB against its "
                       f"float32 source's {f['weight_mem_mb']:.2f} MiB "
                       f"({o['weight_mem_mb'] / f['weight_mem_mb']:.2f}x), "
                       f"at {o['step_latency_ms'] / f['step_latency_ms']:.2f}x its latency per token and "
                       f"{o['tokens_per_s'] / f['tokens_per_s']:.2f}x its batched throughput.")
    return out


def load_plot(load: pd.DataFrame) -> str:
    """Throughput of each export's HTTP server against the number of concurrent clients."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    sns.lineplot(load, x="clients", y="tokens_per_s", hue="model", marker="o", ax=ax)
    ax.set(xscale="log", xlabel="concurrent clients (log scale)", ylabel="tokens/s, all clients together")
    ax.set_xticks(sorted(load["clients"].unique()), [str(c) for c in sorted(load["clients"].unique())])
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return figure_html(fig, "Each export served over HTTP on loopback (python -m iteralite.serve DIR --http PORT) "
                            "to so many concurrent clients, each streaming completions one after another: the "
                            "server decodes all of them in one batch per step (continuous batching).")


def served_figures(load: pd.DataFrame) -> dict:
    """Target keys of the serving figures, at the most clients: the baseline's throughput over its one-client
    throughput, and the fastest compressed export's (pruned, INT4) over the baseline's."""
    top = load["clients"].max()
    rate = load.set_index(["model", "clients"])["tokens_per_s"]
    figures = {}
    if ("baseline/dense", top) in rate.index:
        base = rate[("baseline/dense", top)]
        figures["served_scaling"] = (base / rate[("baseline/dense", load["clients"].min())], "baseline/dense")
        compressed = load[(load["clients"] == top) & load["model"].str.match(r"(int4-)?(pruned|finetuned)/")]
        if len(compressed):
            fastest = compressed.sort_values("tokens_per_s").iloc[-1]
            figures["served_compressed"] = (fastest["tokens_per_s"] / base, fastest["model"])
    return figures


def load_findings(load: pd.DataFrame) -> list[str]:
    """A sentence per export: its throughput from the fewest to the most clients, time per token, peak RSS."""
    out = []
    for model, rows in load.groupby("model", sort=False):
        first, last = rows.sort_values("clients").iloc[0], rows.sort_values("clients").iloc[-1]
        scaling = last["tokens_per_s"] / first["tokens_per_s"]
        out.append(f"{model}: {first['tokens_per_s']:.0f} tokens/s with {first['clients']} client(s), "
                   f"{last['tokens_per_s']:.0f} with {last['clients']} ({scaling:.1f}x); time per token p50/p95 "
                   f"{first['token_p50_ms']:.2f}/{first['token_p95_ms']:.2f} ms with {first['clients']}, "
                   f"{last['token_p50_ms']:.2f}/{last['token_p95_ms']:.2f} ms with {last['clients']}; the server's "
                   f"peak RSS {last['server_peak_rss_mb']:.0f} MB; {int(rows['failed'].sum())} of "
                   f"{int(rows['requests'].sum())} requests failed.")
    return out


def rulegraph_plot(dot: str) -> str:
    """The study's rules in layers from the corpus (top) to the report, an arrow for each dependency."""
    nodes, edges = rulegraph.parse_dot(dot)
    depth = rulegraph.layers(nodes, edges)
    rows: dict[int, list[str]] = {}
    for node in sorted(nodes, key=lambda n: nodes[n]):
        rows.setdefault(depth[node], []).append(node)
    position = {n: (i - (len(row) - 1) / 2, -d) for d, row in rows.items() for i, n in enumerate(row)}
    width = max(len(row) for row in rows.values())
    fig, ax = plt.subplots(figsize=(2.2 * width + 1, 0.42 * len(rows) + 0.3))
    for src, dst in edges:
        ax.annotate("", xy=position[dst], xytext=position[src],
                    arrowprops={"arrowstyle": "-|>", "color": "#aaa", "lw": 0.7, "shrinkA": 7, "shrinkB": 7})
    for node, (x, y) in position.items():
        ax.text(x, y, nodes[node], ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": "#eef3fa", "ec": "#4c72b0"})
    ax.set(xlim=(-width / 2 - 0.2, width / 2 + 0.2), ylim=(-len(rows) + 0.5, 0.5))
    ax.axis("off")
    return figure_html(fig, "The workflow: every rule of the study (Snakemake's rule graph), each below the rules it "
                            "reads from.")


def cost_plot(runtimes: pd.DataFrame) -> str:
    """Wall time and peak memory of every job, grouped by rule."""
    frame = runtimes.copy()
    frame["rule"] = frame["job"].str.split("/").str[0]
    by_rule = frame.groupby("rule").agg(jobs=("job", "size"), seconds=("seconds", "sum"),
                                        peak_mb=("max_rss_mb", "max")).sort_values("seconds", ascending=False)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 + 0.32 * len(by_rule)), sharey=True)
    labels = [f"{rule} ({jobs} job{'s' if jobs > 1 else ''})" for rule, jobs in by_rule["jobs"].items()]
    axes[0].barh(labels, by_rule["seconds"] / 60, color="#4c72b0")
    axes[0].set(xlabel="wall time, all jobs of the rule (min)")
    axes[0].invert_yaxis()
    axes[1].barh(labels, by_rule["peak_mb"] / 1024, color="#dd8452")
    axes[1].set(xlabel="peak resident memory of one job (GiB)")
    return figure_html(fig, "Cost per rule, from Snakemake's benchmark files: total wall time of its jobs and the "
                            "largest peak resident memory (max_rss) of one job; the basis of the Slurm requests.")


def runtime_table(benchmark_files: list[str]) -> pd.DataFrame:
    """Wall time and peak memory of each job, from Snakemake's benchmark files (benchmarks/<job>.tsv)."""
    rows = []
    for path in benchmark_files:
        bench = pd.read_csv(path, sep="\t")
        job = path.split("benchmarks/", 1)[-1].removesuffix(".tsv")
        rows.append({"job": job, "seconds": bench["s"].iloc[-1], "max_rss_mb": bench["max_rss"].iloc[-1]})
    return pd.DataFrame(rows)


def family_stats(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per family (a model recipe, all its seeds): the mean of each figure over the seeds, the spread of
    test perplexity (standard deviation, min, max) and the number of seeds, computed from the per-seed rows."""
    frame = summary.copy()
    grouped = frame.groupby("family", sort=False)
    stats = grouped[["params", "file_bytes", "test_ppl", "tokens_per_s"]].mean()
    stats["ppl_sd"] = grouped["test_ppl"].std(ddof=1).fillna(0.0)
    stats["ppl_min"], stats["ppl_max"] = grouped["test_ppl"].min(), grouped["test_ppl"].max()
    stats["seeds"] = grouped["test_ppl"].size()
    for column in ("stage", "criterion", "target", "method"):
        stats[column] = grouped[column].first().fillna("")
    return stats.reset_index()


def _best(families: pd.DataFrame, stage: str) -> pd.Series | None:
    """The family of a stage with the lowest mean test perplexity, the dense control left out."""
    frame = families[families["family"].str.startswith(f"{stage}/") & (families["criterion"] != "dense")]
    return frame.sort_values("test_ppl").iloc[0] if len(frame) else None


def targets_vs_measured(families: pd.DataFrame, targets: list[dict], served: dict | None = None) -> pd.DataFrame:
    """The product's targets (report/targets.yaml) beside this study's best family at each stage (means over its
    seeds): a ratio to the baseline, or to the dense control; `served` adds the HTTP server's (served_figures)."""
    base = families[families["family"] == "baseline/dense"].iloc[0]
    control = families[families["family"].str.startswith("finetuned/") & (families["criterion"] == "dense")]
    measured = dict(served or {})
    for key, stage in (("pruned", "finetuned"), ("int4", "int4-finetuned")):
        best = _best(families, stage)
        if best is not None:
            measured[f"size_{key}"] = (base["file_bytes"] / best["file_bytes"], best["family"])
            measured[f"speed_{key}"] = (best["tokens_per_s"] / base["tokens_per_s"], best["family"])
            measured[f"ppl_{key}"] = (best["test_ppl"] / base["test_ppl"] - 1, best["family"])
            if key == "pruned" and len(control):
                measured["ppl_vs_control"] = (best["test_ppl"] / control.iloc[0]["test_ppl"] - 1, best["family"])
    rows = []
    for target in targets:
        key, at_most = target["key"], "at_most" in target
        bound = target["at_most"] if at_most else target["at_least"]
        value, model = measured.get(key, (float("nan"), ""))
        held = value <= bound if at_most else value >= bound
        fmt = (lambda v: f"{v:+.1%}") if key.startswith("ppl") else (lambda v: f"{v:.2f}x")
        rows.append({"figure": target["figure"], "target": ("at most " if at_most else "at least ") + fmt(bound),
                     "measured": fmt(value) if value == value else "", "model (mean over seeds)": model,
                     "met": "yes" if value == value and held else "no"})
    return pd.DataFrame(rows)


def _ppl_text(row: pd.Series) -> str:
    spread = f" ± {row['ppl_sd']:.2f}" if row["seeds"] > 1 else ""
    return f"{row['test_ppl']:.2f}{spread} ({row['seeds']} seed{'s' if row['seeds'] > 1 else ''})"


def _separated(a: pd.Series, b: pd.Series) -> bool:
    """Whether two families differ by more than their spread: every seed of one beats every seed of the other."""
    return a["ppl_max"] < b["ppl_min"] or b["ppl_max"] < a["ppl_min"]


def _verdict(a: pd.Series, b: pd.Series) -> str:
    if a["seeds"] < 2 or b["seeds"] < 2:
        return "one seed each, so the spread is unknown"
    if _separated(a, b):
        return "every seed of one beats every seed of the other: the difference exceeds the spread"
    return "their seeds overlap: the difference is within the spread"


def findings(families: pd.DataFrame) -> list[str]:
    """Sentences written from the numbers: the best recovery, against random, the control, other methods, INT4."""
    base = families[families["family"] == "baseline/dense"].iloc[0]
    best = _best(families, "finetuned")
    if best is None:
        return []
    tuned = families[families["stage"] == "finetuned"]

    def vs_base(row):
        return f"{row['test_ppl'] / base['test_ppl'] - 1:+.1%}"

    label = f"{best['criterion']} ({best['method']}, {best['target']})"
    control = tuned[tuned["criterion"] == "dense"]
    out = unfit_baseline(base, best, control.iloc[0], tuned) if len(control) else []
    out.append(f"Best recovery: {label} reaches test perplexity {_ppl_text(best)}, {vs_base(best)} against the "
               f"baseline's {base['test_ppl']:.2f}, with {best['params'] / base['params']:.0%} of its parameters.")
    same_recipe = tuned[(tuned["target"] == best["target"]) & (tuned["method"] == best["method"])]
    for _, other in same_recipe[same_recipe["family"] != best["family"]].sort_values("test_ppl").iterrows():
        if other["criterion"] != "dense":
            out.append(f"{other['criterion']} with the same recipe: {_ppl_text(other)}, {vs_base(other)}; "
                       f"{_verdict(best, other)}.")
    if len(control):
        c = control.iloc[0]
        effect = ("extra training alone gains that much" if c["test_ppl"] < base["test_ppl"]
                  else "extra training alone does not improve the baseline")
        out.append(f"The dense control (the baseline fine-tuned with the same recipe and budget) reaches "
                   f"{_ppl_text(c)}, {vs_base(c)}: {effect}; {label} is {best['test_ppl'] / c['test_ppl'] - 1:+.1%} "
                   f"against it; {_verdict(best, c)}.")
    methods = tuned[(tuned["criterion"] == best["criterion"]) & (tuned["target"] == best["target"])
                    & (tuned["family"] != best["family"])]
    for _, other in methods.iterrows():
        out.append(f"{best['criterion']} recovered by {other['method']} instead, same budget: {_ppl_text(other)}, "
                   f"{vs_base(other)}; {_verdict(best, other)}.")
    schedules = tuned[(tuned["criterion"] == best["criterion"]) & (tuned["method"] == best["method"])
                      & (tuned["params"] == best["params"]) & (tuned["family"] != best["family"])]
    for _, other in schedules.iterrows():  # the same size reached another way (e.g. in one shot, not in steps)
        out.append(f"{best['criterion']} ({best['method']}) at the same size as {other['target']}: "
                   f"{_ppl_text(other)}, {vs_base(other)}; {_verdict(best, other)}.")
    quantized = families[families["family"] == f"int4-{best['family']}"]
    if len(quantized):
        q = quantized.iloc[0]
        out.append(f"Its INT4 copy is {base['file_bytes'] / q['file_bytes']:.1f}x smaller than the fp32 baseline "
                   f"file at test perplexity {_ppl_text(q)}, {vs_base(q)}.")
    return out


# A dense control below this fraction of the baseline's perplexity: the baseline does not fit the study's corpus
# (a user's model trained on other text), and its figures against the baseline say little about compression.
UNFIT_BASELINE = 0.5


def unfit_baseline(base: pd.Series, best: pd.Series, control: pd.Series, tuned: pd.DataFrame) -> list[str]:
    """The first finding when fine-tuning alone more than halves the baseline's perplexity: what happened, which
    recovery does best, and what pruning costs against the control, the fair reference then."""
    if control["test_ppl"] >= UNFIT_BASELINE * base["test_ppl"]:
        return []
    plain = tuned[(tuned["method"] == "plain") & (tuned["criterion"] != "dense")].sort_values("test_ppl")
    advice = (f"plain fine-tuning recovers best here: {plain.iloc[0]['family']} reaches {_ppl_text(plain.iloc[0])}"
              if len(plain) and plain.iloc[0]["family"] == best["family"] else
              f"recovery by plain fine-tuning ({plain.iloc[0]['family']}) reaches {_ppl_text(plain.iloc[0])}"
              if len(plain) else "recovery by plain fine-tuning, which does not inherit the baseline's fit, is not "
              "in this study: add plain to finetune.methods")
    return [f"The baseline does not fit this corpus: fine-tuning it alone (the dense control) takes its test "
            f"perplexity from {base['test_ppl']:.2f} to {control['test_ppl']:.2f}, so a figure against the baseline "
            f"mostly measures that training. Distillation copies the baseline, fit and all; {advice}. Against the "
            f"control, the fair reference here, the best pruned model ({best['family']}) is "
            f"{best['test_ppl'] / control['test_ppl'] - 1:+.1%}."]


def recovery_plot(summary: pd.DataFrame) -> str:
    """Test perplexity per recipe after pruning and after fine-tuning: mean over seeds with min-max error bars."""
    frame = summary[summary["stage"].isin(["pruned", "finetuned"])].copy()
    frame["recipe"] = frame["family"].str.split("/").str[1]
    frame["recipe"] = frame.apply(lambda r: r["recipe"] if r["stage"] == "pruned" else
                                  r["recipe"].removesuffix(f"-{r['method']}") + f" ({r['method']})", axis=1)
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * frame["recipe"].nunique()))
    sns.pointplot(frame, y="recipe", x="test_ppl", hue="stage", errorbar=lambda v: (v.min(), v.max()),
                  linestyles="none", capsize=0.3, ax=ax, order=sorted(frame["recipe"].unique()))
    base = summary[summary["model"] == "baseline/dense"]["test_ppl"].iloc[0]
    ax.axvline(base, color="k", ls="--", lw=1, label=f"baseline {base:.1f}")
    ax.set(xscale="log", xlabel="test perplexity (log scale)", ylabel="")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return figure_html(fig, "Test perplexity of every recipe after pruning and after fine-tuning: the point is the "
                            "mean over seeds, the bar spans the lowest to the highest seed.")


def finetune_table(families: pd.DataFrame) -> pd.DataFrame:
    """Each fine-tuned recipe: its mean test perplexity before and after fine-tuning, spread, against the baseline
    and the equal-budget control."""
    ppl = families.set_index("family")["test_ppl"]
    base = ppl["baseline/dense"]
    control = families[families["family"] == "finetuned/dense"]
    control_ppl = control["test_ppl"].iloc[0] if len(control) else None
    rows = []
    for _, row in families[families["stage"] == "finetuned"].iterrows():
        variant = row["family"].partition("/")[2]
        pruned = ppl.get(f"pruned/{variant.removesuffix('-' + row['method'])}")
        rows.append({"recipe": variant, "seeds": row["seeds"], "pruned ppl": pruned, "fine-tuned ppl": row["test_ppl"],
                     "spread (sd)": row["ppl_sd"], "vs baseline": f"{row['test_ppl'] / base - 1:+.1%}",
                     "vs control": f"{row['test_ppl'] / control_ppl - 1:+.1%}" if control_ppl else ""})
    return pd.DataFrame(rows)


def samples_html(samples: dict) -> str:
    parts = []
    for model, texts in samples.items():
        items = "".join(f"<li>{html.escape(t)}</li>" for t in texts)
        parts.append(f"<h4>{html.escape(model)}</h4><ol>{items}</ol>")
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;font-size:13px;margin:1em 0}
table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
figure{margin:1.5em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}
pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}
li{margin:.3em 0;font-size:13px}"""


def source_section(source: dict | None) -> list[str]:
    """Where an imported baseline came from: its file, SHA-256, the layout found, what was inferred and warned."""
    if not source:
        return []
    inferred = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in source["inferred"].items())
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in source["warnings"]) or "<li>none</li>"
    return [f"<h2>Source</h2><p>The baseline is imported from <code>{html.escape(source['file'])}</code> (SHA-256 "
            f"<code>{source['sha256']}</code>), a checkpoint the Itera-Lite code wrote: "
            f"{html.escape('; '.join(source['layout']))}.</p><p>Inferred:</p><ul>{inferred}</ul>"
            f"<p>Warnings:</p><ul>{warnings}</ul>"]


def category_table(analysis: dict, plan: dict) -> pd.DataFrame:
    """The measured parameters by category, and the study plan's figures beside them where the model has the plan's
    parameter count (report/targets.yaml, plan_breakdown)."""
    table = pd.DataFrame(analysis["category_breakdown"])
    measured = table.assign(params=table["params"].map("{:,}".format),
                            percent=table["percent"].map("{:.1f}%".format))
    if analysis["total_params"] != plan["parameters"]:
        return measured
    planned = plan["categories"]
    return measured.assign(**{
        "plan's params": [planned.get(c, {}).get("params", "") for c in table["category"]],
        "plan's percent": [f"{planned[c]['percent']:.1f}%" if c in planned else "" for c in table["category"]]})


def build(inputs: dict, config: dict, out_path: str) -> None:
    everything = pd.read_csv(inputs["summary"])
    summary = everything[everything["runtime"] == "torch"]  # the study's own analysis; exports have their section
    families = family_stats(summary)
    analysis = read_json(inputs["analysis"])
    corpus = read_json(inputs["corpus"])
    speed, latency, load = (pd.read_csv(inputs[name]) for name in ("speed", "latency", "load"))
    torch_speed = speed[speed["runtime"] == "torch"]
    samples = read_json(inputs["samples"])
    with open(inputs["targets"], encoding="utf-8") as f:
        shipped = yaml.safe_load(f)
    targets = shipped["targets"]
    prune_stats = [read_json(p) for p in _as_list(inputs.get("prune_stats"))]
    sections = [
        "<h1>IteraLite compression study</h1>",
        f"<p>Corpus: {html.escape(corpus.get('origin', corpus['source']))}; "
        f"{corpus['splits']['train']['words']:,} training words. "
        f"Speed figures on {html.escape(str(speed['device'].iloc[0]))} "
        f"({html.escape(str(speed['machine'].iloc[0]))}), {int(speed['threads'].iloc[0])} thread(s).</p>",
        "<h2>Findings</h2>", "".join(f"<p>{html.escape(line)}</p>" for line in findings(families)),
        "<h2>Workflow</h2>", rulegraph_plot(open(inputs["rulegraph"], encoding="utf-8").read()),
        "<h2>Summary</h2><p>One row per model and seed (results/metrics/summary.csv).</p>",
        test_tokens_note(summary, config, analysis["config"]["max_seq"]),
        table_html(display(everything, drop=["family"])),
        "<h2>Targets vs measured</h2><p>The product's targets for the default study (report/targets.yaml) beside "
        "the best fine-tuned recipe of this study (lowest mean test perplexity over its seeds, the control left "
        "out).</p>",
        table_html(targets_vs_measured(families, targets, served_figures(load))),
        *source_section(analysis.get("source")),
        "<h2>Parameter distribution</h2>", parameter_plot(analysis),
        table_html(display(pd.DataFrame(analysis["by_component"]).assign(
            percent=lambda f: f["percent"].map("{:.1f}%".format)))),
        f"<p>By category ({html.escape(analysis['config']['architecture'])} architecture; where the model has "
        f"the study plan's {shipped['plan_breakdown']['parameters']:,} parameters, the plan's own figures beside "
        "them, from report/targets.yaml):</p>",
        table_html(category_table(analysis, shipped["plan_breakdown"])),
    ]
    if inputs.get("importance"):
        sections += ["<h2>Importance</h2>", importance_plot(_as_list(inputs["importance"]))]
    if prune_stats:
        sections += ["<h2>Pruning</h2>", kept_heatmap(_as_list(inputs["prune_stats"])),
                     table_html(pd.DataFrame([
                         {"variant": s["variant"], "parameters before": f"{s['params_before']:,}",
                          "parameters after": f"{s['params_after']:,}", "removed": f"{s['removed_fraction']:.1%}",
                          "file before (MB)": f"{s['file_bytes_before'] / 1e6:.2f}",
                          "file after (MB)": f"{s['file_bytes_after'] / 1e6:.2f}",
                          "kept per kind": ", ".join(f"{k} {1 - r:.0%}" for k, r in s["plan"]["ratios"].items())}
                         for s in prune_stats]))]
    sections += ["<h2>Training</h2>", curves_plot(inputs["baseline_curve"], _as_list(inputs.get("finetune_curves"))),
                 recovery_plot(summary),
                 "<p>Mean test perplexity of every recipe over its seeds, after pruning and after fine-tuning, "
                 "against the baseline and the control (the dense baseline fine-tuned with the same budget: extra "
                 "training alone).</p>", table_html(display(finetune_table(families)))]
    sections += ["<h2>Size and quality</h2>", frontier_plot(families), tradeoff_plot(summary)]
    if inputs.get("quant_stats"):
        quant = [read_json(p) for p in _as_list(inputs["quant_stats"])]
        sections.append(table_html(pd.DataFrame([
            {"source": q["source"], "bits per parameter (with scales)": f"{q['bits_per_param']:.2f}",
             "parameters in 4 bits": f"{q['int4_fraction']:.1%}", "file (MB)": f"{q['file_bytes'] / 1e6:.2f}",
             "largest relative error of a tensor": f"{max(t['relative_error'] for t in q['tensors']):.1%}"}
            for q in quant])))
    sections += ["<h2>Speed</h2>", speed_plot(torch_speed, latency[latency["runtime"] == "torch"]),
                 table_html(display(speed, drop=["machine"]))]
    deployed = deployment_table(everything)
    if len(deployed):
        sections += ["<h2>Deployment</h2><p>The exported models (results/export/, docs/deploy.md) served by ONNX "
                     "Runtime without torch, beside the same models in torch. Each export was verified before it "
                     "was written: ONNX Runtime's logits equal torch's, the step graph equals the sequence graph, "
                     "the test perplexity agrees within 0.1%. Weights in memory: torch's parameters and buffers; "
                     "ONNX Runtime's graph initializers. Serving process: the peak RSS of a fresh process that "
                     "loads the model and generates 64 tokens.</p>",
                     deployment_plot(deployed), "".join(f"<p>{html.escape(line)}</p>"
                                                        for line in deployment_findings(deployed)),
                     table_html(display(deployed))]
    if len(load):
        sections += ["<h2>Serving under load</h2><p>What compression buys a server: every export behind its HTTP "
                     "server (docs/deploy.md), driven by concurrent clients on the same machine (results/bench/"
                     "load.csv). Time per token: between a stream's tokens as a client receives them.</p>",
                     load_plot(load), "".join(f"<p>{html.escape(line)}</p>" for line in load_findings(load)),
                     table_html(display(load))]
    sections += ["<h2>Sample generations</h2><p>The same prompts, seed and temperature (0.8) for every model.</p>",
                 samples_html(samples)]
    runtimes = runtime_table(_as_list(inputs.get("job_benchmarks")))
    if len(runtimes):
        sections += ["<h2>Cost per rule</h2>", cost_plot(runtimes)]
    sections += ["<h2>Study config</h2>", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"]
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>IteraLite compression study</title>" \
           f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>"
    write_text(out_path, page)


def test_tokens_note(summary: pd.DataFrame, config: dict, max_seq: int) -> str:
    """Says so when the test split held fewer tokens than the study's budget (`evaluate.test_tokens`). Perplexity
    scores whole windows of max_seq tokens (the baseline's: an imported one has its own), so a full budget scores
    more than budget - max_seq tokens."""
    budget, window = config["evaluate"]["test_tokens"], max_seq
    scored = int(summary["test_tokens"].min())
    if scored + window > budget:
        return ""
    return (f"<p><b>The test split is smaller than the budget:</b> perplexity is over {scored:,} test tokens, fewer "
            f"than evaluate.test_tokens = {budget:,}.</p>")


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
