"""What a prepared SFT corpus says about itself: manifest.json, DATA_CARD.md, a length histogram,
training_state.json, and the summary table printed at the end of the stage.

The data card holds no timings or dates, so it is byte-identical for identical inputs; timings live in
training_state.json and the creation time only in manifest.json's ``created_at``.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
import re
from pathlib import Path

from utils.common.config import to_dict
from utils.common.markdown import markdown_table
from utils.common.publish import write_json_atomic, write_text_atomic
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.messages import TOOL_USE_KEYS
from utils.data.mixture import achieved_ratios
from utils.data.shards import FORMAT_VERSION
from utils.data.templates import ChatTemplate, special_token_ids

HISTOGRAM = "length_histogram.png"
LIBRARIES = ("transformers", "tokenizers", "datasets", "torch", "numpy", "jsonschema")


def tokenizer_metadata(tokenizer, hf_dir: Path) -> dict:
    """Fingerprint, vocabulary size and special tokens: what the trainer checks against its model."""
    named = {}
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token"):
        token = getattr(tokenizer, attr, None)
        if token is not None:
            named[attr] = [token, tokenizer.convert_tokens_to_ids(token)]
    listed = {t for t, _ in named.values()}
    for token, tid in sorted(special_token_ids(tokenizer).items(), key=lambda kv: kv[1]):
        if token not in listed:
            named[token] = [token, tid]
    return {"tokenizer_sha256": tokenizer_fingerprint(hf_dir), "vocab_size": len(tokenizer),
            "tokenizer_path": str(hf_dir), "special_tokens": named,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def source_report(config, stats) -> dict:
    """Per-source counts, weight, multiplier, target and achieved share of the train output."""
    achieved = achieved_ratios({n: s.written["train"] for n, s in stats.sources.items()})
    out = {}
    for spec in config.datasets:
        s = stats.sources[spec.name]
        target = config.mixture.target_ratios.get(spec.name)
        out[spec.name] = {
            "read": s.read, "skipped": sum(s.skipped.values()), "skipped_by_reason": dict(sorted(s.skipped.items())),
            "dropped": sum(s.dropped.values()), "dropped_by_reason": dict(sorted(s.dropped.items())),
            "kept_train": s.kept["train"], "kept_val": s.kept["val"], "truncated": s.truncated,
            "weight": spec.weight, "multiplier": stats.multipliers.get(spec.name, 0.0),
            "domain": spec.domain, "replay": spec.format == "text", "license": spec.license, "target_ratio": target,
            "written_train": s.written["train"], "written_val": s.written["val"],
            "tokens_train": s.tokens["train"], "supervised_tokens_train": s.supervised["train"],
            "achieved_ratio": round(achieved[spec.name], 6),
        }
        if +s.tool_use:  # sources that use tools: kept conversations with tools, their calls and results
            out[spec.name]["tool_use"] = {k: s.tool_use[k] for k in TOOL_USE_KEYS}
        if s.traces["traces"]:  # sources with reasoning traces: the mode, the traces read, those in the ids
            out[spec.name]["reasoning"] = {"mode": spec.reasoning, "traces": s.traces["traces"],
                                           "rendered": s.traces["rendered"]}
    return out


def build_manifest(config, template: ChatTemplate, hf_dir: Path, splits: dict, stats) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "name": config.name,
        "tokenizer_metadata": tokenizer_metadata(template.tokenizer, hf_dir),
        "template": {"name": template.name, "family": template.family, "notes": template.notes,
                     "stop_token_ids": template.stop_token_ids, "train_on": config.train_on},
        "sequence_length": config.output_params.sequence_length,
        "splits": splits,
        "sources": source_report(config, stats),
        "config": to_dict(config),
        "versions": library_versions(),
    }


def write_reports(out_dir: Path, config, template: ChatTemplate, manifest: dict, stats, num_proc: int,
                  config_path) -> None:
    """manifest.json, training_state.json, the histogram and DATA_CARD.md into ``out_dir``."""
    write_json_atomic(out_dir / "manifest.json", manifest)
    write_json_atomic(out_dir / "training_state.json", {
        "config_path": str(config_path) if config_path else None, "num_proc": num_proc,
        "sources": manifest["sources"],
        "drops": drops_by_reason(stats),
        "drop_examples": stats.drop_examples,
        "skipped_rows_total": sum(sum(s.skipped.values()) for s in stats.sources.values()),
        "skipped_rows": stats.skipped_rows,
        "timings": {k: round(v, 3) for k, v in stats.timings.items()},
        "conversations_per_s": round(sum(s.read for s in stats.sources.values())
                                     / max(stats.timings.get("read_encode_s", 0), 1e-9), 1),
    })
    write_histogram(out_dir / HISTOGRAM, stats.lengths, config.output_params.sequence_length)
    write_text_atomic(out_dir / "DATA_CARD.md", data_card(config, template, manifest, stats))


def drops_by_reason(stats) -> dict:
    """reason -> {source: count}, for drops and skipped rows alike (skips prefixed ``malformed:``)."""
    out: dict[str, dict[str, int]] = {}
    for name, s in stats.sources.items():
        for reason, n in list(s.dropped.items()) + [(f"malformed:{r}", n) for r, n in s.skipped.items()]:
            out.setdefault(reason, {})[name] = n
    return dict(sorted(out.items()))


def length_summary(lengths) -> dict:
    """min/mean/percentiles/max of tokens per written example, from the exact length counts."""
    total = sum(lengths.values())
    if not total:
        return {}
    ordered = sorted(lengths.items())
    out = {"examples": total, "min": ordered[0][0], "max": ordered[-1][0],
           "mean": round(sum(k * n for k, n in ordered) / total, 1)}
    for q in (50, 90, 99):
        seen, need = 0, q / 100 * total
        for length, n in ordered:
            seen += n
            if seen >= need:
                out[f"p{q}"] = length
                break
    return out


def write_histogram(path: Path, lengths, sequence_length: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    values, weights = zip(*sorted(lengths.items())) if lengths else ((0,), (0,))
    ax.hist(values, weights=weights, bins=min(50, max(1, sequence_length // 8)), range=(0, sequence_length))
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title("Length of written examples (train + val)")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def code_fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def data_card(config, template: ChatTemplate, manifest: dict, stats) -> str:
    meta, sources = manifest["tokenizer_metadata"], manifest["sources"]
    lines = [f"# Data card: {config.name}", "", config.description or "(no description in the config)", "",
             f"- tokenizer: `{meta['tokenizer_sha256']}` (vocab {meta['vocab_size']})",
             f"- template: `{template.name}` (family {template.family}); stop tokens {template.stop_token_ids}",
             f"- loss on: {config.train_on.replace('_', ' ')}, each with its end-of-turn token",
             f"- sequence length {config.output_params.sequence_length}; overlong conversations: "
             f"{config.output_params.overlong}; seed {config.seed}"]
    lines += [f"- note: {note}" for note in template.notes] + ["", "## Sources", ""]
    lines += markdown_table(["source", "type", "data", "license", "domain", "weight"], [
        [d.name, d.type, f"`{d.dataset_name or ', '.join(d.directories)}`", d.license or "not given",
         "yes" if d.domain else "no", d.weight] for d in config.datasets])
    lines += ["", "## Counts and mixture", "",
              "read = rows read; skipped = malformed rows; kept = after filters and dedupe; written = after "
              "the mixture (multiplier = how often each kept train example is written on average).", ""]
    lines += markdown_table(["source", "read", "skipped", "dropped", "kept train", "kept val", "multiplier",
                     "written train", "written val", "target", "achieved"], [
        [n, s["read"], s["skipped"], s["dropped"], s["kept_train"], s["kept_val"], f"{s['multiplier']:.3f}",
         s["written_train"], s["written_val"], "-" if s["target_ratio"] is None else s["target_ratio"],
         f"{s['achieved_ratio']:.3f}"] for n, s in sources.items()])
    tooled = {n: s["tool_use"] for n, s in sources.items() if "tool_use" in s}
    if tooled:
        lines += ["", "## Tool use", "", "Kept conversations that offer tools, their tool calls (trained) and tool "
                  "results (context only).", ""]
        lines += markdown_table(["source", *(k.replace("_", " ") for k in TOOL_USE_KEYS)],
                                [[n, *t.values()] for n, t in tooled.items()])
    traced = {n: s["reasoning"] for n, s in sources.items() if "reasoning" in s}
    if traced:
        lines += ["", "## Reasoning traces", "", "Kept conversations' assistant reasoning traces; rendered = in the "
                  "token ids (a template may leave out earlier turns' traces, drop removes them all); train "
                  "supervises the rendered ones, keep_context keeps them as context only.", ""]
        lines += markdown_table(["source", "mode", "traces", "rendered"],
                                [[n, r["mode"], r["traces"], r["rendered"]] for n, r in traced.items()])
    lines += ["", "## Drops by reason", ""]
    drops = drops_by_reason(stats)
    lines += markdown_table(["reason", "total", "by source"], [
        [r, sum(v.values()), ", ".join(f"{k}: {n}" for k, n in v.items())] for r, v in drops.items()]) \
        if drops else ["Nothing was dropped."]
    lines += ["", "## Splits and lengths", ""]
    lines += markdown_table(["split", "conversations", "tokens", "supervised tokens", "shards"], [
        [k, v["conversations"], v["total_tokens"], v["supervised_tokens"], v["num_shards"]]
        for k, v in manifest["splits"].items()])
    summary = length_summary(stats.lengths)
    lines += ["", "Tokens per written example: " + ", ".join(f"{k} {v}" for k, v in summary.items()), "",
              f"![tokens per example]({HISTOGRAM})", "", "## Examples", "",
              "One conversation per source as the model sees it; the supervised tokens (the loss) are "
              "wrapped in `[[` and `]]`, everything else is context only.", ""]
    modes = {d.name: d.reasoning for d in config.datasets}
    for name, (_tokens, (messages, tools)) in stats.samples.items():
        text = template.mark_supervised(messages, config.train_on, tools=tools, reasoning=modes[name])
        fence = code_fence(text)
        lines += [f"### {name}", "", fence + "text", text, fence, ""]
    return "\n".join(lines).rstrip() + "\n"


def print_summary(config, manifest: dict, stats) -> None:
    """The end-of-stage table: per source read/kept/dropped by reason/tokens, then the splits."""
    rows = []
    for name, s in manifest["sources"].items():
        reasons = {**s["dropped_by_reason"], **{f"malformed:{k}": v for k, v in s["skipped_by_reason"].items()}}
        rows.append([name, s["read"], s["kept_train"] + s["kept_val"], s["skipped"] + s["dropped"],
                     s["written_train"], s["written_val"], s["tokens_train"], f"{s['achieved_ratio']:.3f}",
                     ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "-"])
    header = ["source", "read", "kept", "dropped", "train", "val", "train tokens", "share", "drop reasons"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print()
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    for split, v in manifest["splits"].items():
        print(f"{split}: {v['conversations']} examples, {v['total_tokens']} tokens "
              f"({v['supervised_tokens']} supervised) in {v['num_shards']} shard(s)")
    listed = stats.skipped_rows[:5]
    for row in listed:
        print(f"skipped {row['origin']}: {row['reason']} ({row['detail']})")
    total = sum(s["skipped"] for s in manifest["sources"].values())
    if total > len(listed):
        print(f"... {total - len(listed)} more skipped rows listed in training_state.json")
    print(f"done in {stats.timings.get('total_s', 0):.1f}s", flush=True)
