"""``gpu.md``: the machine, the versions and one table per section."""

from __future__ import annotations

from typing import List, Optional

from ..bench import report as bench_report
from .plan import BENCH, CHECKS, FIT, PENDING

FIT_FIELDS = [("build_s", "model built in s"), ("fit_s", "fit s"), ("fit_s_per_sample", "fit s per sample"),
              ("samples", "samples"), ("visual_tokens", "visual tokens"), ("layers", "layers"),
              ("target_reduction", "target FLOPs reduction"), ("achieved_reduction", "achieved"),
              ("alpha", "alpha"), ("deleted_tokens", "tokens deleted over all layers")]


def _bench_lines(result: dict) -> List[str]:
    records = result.get("records", [])
    meta = result.get("meta")
    lines = [bench_report.markdown(meta, records).rstrip()] if meta else ["Rows that finished:", "", *bench_report.table(records)]
    llm_side = [r for r in records if "error" not in r and r["mean_layer_visual_tokens"] != r["visual_tokens"]]
    if llm_side:
        lines += ["", "Rows that prune inside the LLM (their visual tokens above are the LLM's input):", "",
                  "| method | ratio | FitPrune recipe | mean visual tokens over LLM layers |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['ratio']} | {r.get('recipe', 'n/a')} | {r['mean_layer_visual_tokens']} |"
                  for r in llm_side]
    batched = [r for r in records if "error" not in r and _batch(r, meta) > 1]
    if batched:
        lines += ["", "| method | ratio | batch | images/s (batch / TTFT) | prefill tokens/s | decode tok/s |",
                  "|---|---|---|---|---|---|"]
        for r in batched:
            batch = _batch(r, meta)
            images = 1000 * batch / r["ttft_ms"]
            prefill = 1000 * batch * r["llm_input_tokens"] / r["llm_prefill_ms"]
            lines.append(f"| {r['method']} | {r['ratio']} | {batch} | {images:.1f} | {prefill:.0f} | {r['decode_tok_s']:.1f} |")
    return lines


def _batch(record: dict, meta: Optional[dict]) -> int:
    """A row's batch size (results from before batch lists keep it in the meta)."""
    return record.get("batch_size") or (meta or {}).get("batch_size", 1)


def _checks_lines(result: dict) -> List[str]:
    lines = ["| check | method | result | detail |", "|---|---|---|---|"]
    for c in result.get("checks", []):
        lines.append(f"| {c['check']} | {c['method']} | {'pass' if c['passed'] else 'FAIL'} | {c['detail']} |")
    return lines


def _fit_lines(result: dict) -> List[str]:
    lines = ["| " + " | ".join(title for _, title in FIT_FIELDS) + " |", "|" + "---|" * len(FIT_FIELDS)]
    return lines + ["| " + " | ".join(str(result.get(key, "n/a")) for key, _ in FIT_FIELDS) + " |"]


RENDER = {BENCH: _bench_lines, CHECKS: _checks_lines, FIT: _fit_lines}


def markdown(results: dict) -> str:
    machine, versions = results["machine"], results["versions"]
    lines = [
        "# GPU check",
        "",
        f"Machine: {machine['device_name']}" + (f" (nvidia-smi: {machine['nvidia_smi']})" if machine.get("nvidia_smi") else "")
        + f", {machine['cpus']} CPUs. Date: {results['date']}. Mode: {results['mode']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    calls = results.get("calls", [])
    merged = len(calls) > 1
    if merged:      # sections merged from several calls: each says when it ran
        lines += [f"Calls, each under its own budget of {results['budget_s']:.0f} s (no section starts after it):", ""]
        lines += [f"- {c['date']} on {c['device_name']}, {c['elapsed_s']:.0f} s: `{c['command']}` "
                  f"({', '.join(c['sections']) or 'no section'})" for c in calls]
        lines += ["", "| section | status | seconds | ran |", "|---|---|---|---|"]
    else:
        lines += [f"Command: `{results['command']}`; {results['elapsed_s']:.0f} s in all, budget {results['budget_s']:.0f} s "
                  "(no section starts after it).", "", "| section | status | seconds |", "|---|---|---|"]
    for s in results["sections"]:
        status = s["status"] + (f": {s['reason']}" if s.get("reason") else "")
        cells = [s["name"], status, f"{s['elapsed_s']:.1f}"] + ([s.get("date", "")] if merged else [])
        lines.append("| " + " | ".join(cells) + " |")
    for s in results["sections"]:
        if s["status"] in PENDING:
            continue
        lines += ["", f"## {s['title']}", "", f"Status: {s['status']}" + (f": {s['reason']}" if s.get("reason") else "") + "."]
        if s.get("command") and not (s.get("result") or {}).get("meta"):   # a bench's own line is fuller
            lines += ["", f"Command: `{s['command']}`"]
        if s.get("error"):
            lines += ["", "```", s["error"], "```"]
        if s.get("result"):
            lines += ["", *RENDER[s["kind"]](s["result"])]
    return "\n".join(lines) + "\n"
