"""Run the GPU check's sections, each in its own process, under one time budget.

A section that fails, crashes or runs out of time is recorded with its error and
the next one starts; no section starts once the budget is spent, nor (on a GPU)
when its estimated minutes do not fit in what is left. ``results.json`` and
``gpu.md`` are rewritten after every section, so an interrupted run still
leaves what finished.

One call need not run everything: ``--sections a,b`` runs those, ``--resume``
the ones the calls before did not start or never ran. Either merges into the
``results.json`` already in OUT_DIR, so ``gpu.md`` holds every section's latest
run, each with its date and machine.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

from . import plan, report

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT_FILES = {plan.BENCH: ("results.json", "results.partial.json"), plan.CHECKS: ("checks.json",),
                plan.FIT: ("fit.json",)}
GRACE_S = 15     # after the interrupt at a deadline, before the kill

PROBE = """
import importlib.metadata as md, json, platform
info = {"python": platform.python_version()}
for dist in ("torch", "transformers", "tokenizers", "accelerate", "llava-torch"):
    try:
        info[dist] = md.version(dist)
    except md.PackageNotFoundError:
        info[dist] = None
import torch
info["cuda"] = torch.version.cuda
info["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print(json.dumps(info))
"""


def environment(extra_path: List[str]) -> Dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(extra_path + [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def run_logged(argv: List[str], env: Dict[str, str], log_path: str, timeout: float, prefix: str):
    """Run ``argv``, echo its output with ``prefix`` and keep it in ``log_path``.
    At the timeout it is interrupted (Python code can still save what finished), then killed.
    Returns (exit code, timed out, last lines of output)."""
    tail = collections.deque(maxlen=25)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)

        def pump():
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip())
                print(f"[{prefix}] {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=5)
    return proc.returncode, timed_out, "\n".join(tail)


def read_result(kind: str, folder: str) -> Optional[dict]:
    for name in RESULT_FILES[kind]:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as handle:
                data = json.load(handle)
            return {"records": data} if isinstance(data, list) else data
    return None


def probe(python: str, env: Dict[str, str]) -> dict:
    done = subprocess.run([python, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gpu-check: {python} cannot import torch: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def nvidia_smi() -> Optional[str]:
    if not shutil.which("nvidia-smi"):
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def previous_results(out_dir: str, mode: str) -> Optional[dict]:
    """The results.json an earlier call left in ``out_dir`` (None: there is none); one of
    another mode is refused, so GPU and smoke sections never share a gpu.md."""
    path = os.path.join(out_dir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        results = json.load(handle)
    if results.get("mode") != mode:
        raise ValueError(f"{path} holds a {results.get('mode')!r} run, not {mode!r}: use another OUT_DIR")
    return results


class Check:
    def __init__(self, profile: plan.Profile, out_dir: str, python: str, site: Optional[str], started: float,
                 command: str, previous: Optional[dict] = None):
        """``previous``: the results of the calls before, which this one merges into."""
        self.profile, self.out_dir, self.python, self.started = profile, out_dir, python, started
        self.envs = {plan.UPSTREAM: environment([site] if site else []), plan.HOST: environment([])}
        upstream = probe(python, self.envs[plan.UPSTREAM])
        if profile.mode == "gpu" and not upstream["device_name"]:
            raise SystemExit("gpu-check: torch sees no CUDA device; without a GPU run with --cpu-smoke")
        host = probe(python, self.envs[plan.HOST]) if site else upstream
        self.call = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                     "device_name": upstream["device_name"] or f"CPU ({os.cpu_count()} cores)",
                     "elapsed_s": 0.0, "sections": []}
        self.results = {
            "mode": profile.mode, "command": command, "date": self.call["date"],
            "budget_s": profile.budget_s, "elapsed_s": 0.0,
            "machine": {"device_name": upstream["device_name"] or f"CPU ({os.cpu_count()} cores)",
                        "nvidia_smi": nvidia_smi(), "cpus": os.cpu_count()},
            "versions": {"python": upstream["python"], "torch": upstream["torch"], "CUDA": upstream["cuda"],
                         "transformers (upstream llava)": upstream["transformers"], "tokenizers": upstream["tokenizers"],
                         "accelerate": upstream["accelerate"], "llava-torch": upstream["llava-torch"],
                         "transformers (machine's own)": host["transformers"], "llava_freepruner": _plugin_version()},
            "sections": list(previous["sections"]) if previous else [],
            "calls": list(previous.get("calls", [])) + [self.call] if previous else [self.call],
        }

    def elapsed(self) -> float:
        return time.time() - self.started

    def bench_help(self) -> str:
        done = subprocess.run([self.python, "-m", "llava_freepruner", "bench", "--help"], env=self.envs[plan.UPSTREAM],
                              cwd=REPO, capture_output=True, text=True)
        return done.stdout

    def run_section(self, section: plan.Section) -> dict:
        entry = {"name": section.name, "title": section.title, "kind": section.kind, "elapsed_s": 0.0,
                 "date": datetime.datetime.now().isoformat(timespec="seconds"), "device_name": self.call["device_name"]}
        left = self.profile.budget_s - self.elapsed()
        if section.args is None:
            return dict(entry, status="skipped", reason=section.skipped)
        needed = max(self.profile.min_start_s, 60 * section.minutes if self.profile.estimates else 0)
        if left < needed:
            return dict(entry, status="not started", reason=f"time budget: {left:.0f} s left of {self.profile.budget_s:.0f} s, "
                                                            f"needs about {needed:.0f} s (--resume runs it)")
        argv = [self.python, *section.args]
        shutil.rmtree(os.path.join(self.out_dir, section.name), ignore_errors=True)    # no earlier call's result
        entry["command"] = " ".join(shlex.quote(a) for a in ["python", *section.args])
        print(f"gpu-check: [{self.elapsed():5.0f} s] {section.name}: {section.title}", flush=True)
        started = time.time()
        code, timed_out, tail = run_logged(argv, self.envs[section.env], os.path.join(self.out_dir, "logs", f"{section.name}.log"),
                                           left, section.name)
        entry["elapsed_s"] = round(time.time() - started, 1)
        entry["result"] = read_result(section.kind, os.path.join(self.out_dir, section.name))
        if timed_out:
            entry.update(status="timed out", reason=f"stopped at the budget after {entry['elapsed_s']:.0f} s", error=tail)
        elif code != 0:
            entry.update(status="failed", reason=f"exit code {code}", error=tail)
        else:
            failed_rows = [r for r in (entry["result"] or {}).get("records", []) if "error" in r]
            entry["status"] = "partial" if failed_rows else "ok"
            if failed_rows:
                entry["reason"] = f"{len(failed_rows)} rows failed"
        print(f"gpu-check: [{self.elapsed():5.0f} s] {section.name}: {entry['status']} in {entry['elapsed_s']:.0f} s", flush=True)
        return entry

    def keep(self, entry: dict, order: List[str]) -> None:
        """Put a section's entry in, over an earlier call's, in plan order."""
        sections = {s["name"]: s for s in self.results["sections"]}
        sections[entry["name"]] = entry
        self.results["sections"] = [sections[n] for n in order if n in sections]

    def write(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        self.call["elapsed_s"] = self.results["elapsed_s"]
        with open(os.path.join(self.out_dir, "results.json"), "w") as handle:
            json.dump(self.results, handle, indent=2)
        with open(os.path.join(self.out_dir, "gpu.md"), "w") as handle:
            handle.write(report.markdown(self.results))

    def run(self, names: Optional[List[str]] = None, resume: bool = False) -> int:
        """Run the sections ``names`` (None: with ``resume``, those the calls before did not
        start or never ran; else every one). Sections of the plan this call does not run and
        no call ran are listed as not run yet."""
        every = plan.sections(self.profile, self.out_dir, self.bench_help(),
                              self.results["versions"]["transformers (machine's own)"])
        order = [s.name for s in every]
        statuses = {s["name"]: s["status"] for s in self.results["sections"]}
        todo = plan.choose(every, names, statuses if resume else None)
        for section in every:
            if section not in todo and section.name not in statuses:
                self.keep({"name": section.name, "title": section.title, "kind": section.kind, "elapsed_s": 0.0,
                           "status": plan.PENDING[-1]}, order)
        print(f"gpu-check: this call runs {', '.join(s.name for s in todo) or 'nothing: every section has run'}",
              flush=True)
        for section in todo:
            self.keep(self.run_section(section), order)
            self.call["sections"].append(section.name)
            self.write()
        self.write()
        bad = [s["name"] for s in self.results["sections"]      # left for --resume: not a failure
               if s["name"] in self.call["sections"] and s["status"] not in ("ok", "skipped", *plan.PENDING)]
        left = [s["name"] for s in self.results["sections"] if s["status"] in plan.PENDING]
        print(f"gpu-check: done in {self.elapsed():.0f} s; wrote {self.out_dir}/results.json and gpu.md"
              + (f"; not ok: {', '.join(bad)}" if bad else "; every section that ran is ok")
              + (f"; still to run (--resume): {', '.join(left)}" if left else ""), flush=True)
        return 1 if bad else 0


def _plugin_version() -> str:
    from ... import __version__

    return __version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_freepruner.tools.gpucheck",
                                     description="Verify and time llava_freepruner on a CUDA device (or, "
                                                 "with --cpu-smoke, the same sections on tiny shapes on a CPU).")
    parser.add_argument("out_dir", metavar="OUT_DIR", nargs="?",
                        help="where results.json, gpu.md, logs/ and one folder per section go")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU, with this interpreter")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--sections", help="comma-separated sections to run (see --list-sections), merged into "
                                          "OUT_DIR's results.json and gpu.md")
    which.add_argument("--resume", action="store_true",
                       help="run the sections the calls before did not start or never ran, merged into OUT_DIR's results")
    which.add_argument("--list-sections", action="store_true",
                       help="print the sections with their estimated minutes on one H100/H200, and exit")
    parser.add_argument("--site", help="folder with upstream llava and its pinned transformers, put first on "
                                       "PYTHONPATH for the upstream sections (gpu_check.sh installs it)")
    parser.add_argument("--started", type=float, default=None,
                        help="epoch seconds the budget counts from (default: now; gpu_check.sh passes its start)")
    parser.add_argument("--budget-s", type=float, default=None, help="override the mode's time budget")
    args = parser.parse_args(argv)
    profile = plan.CPU_SMOKE if args.cpu_smoke else plan.GPU
    if args.list_sections:
        print(plan.listing(plan.sections(profile, args.out_dir or "OUT_DIR", "", None)))
        return 0
    if args.out_dir is None:
        parser.error("OUT_DIR is required (except with --list-sections)")
    if args.budget_s is not None:
        if args.budget_s <= 0:
            parser.error(f"--budget-s {args.budget_s} is not valid: expected seconds > 0")
        profile = plan.Profile(**dict(profile.__dict__, budget_s=args.budget_s))
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        parser.error(f"OUT_DIR {args.out_dir!r} exists and is not a directory")
    if args.site and not os.path.isdir(args.site):
        parser.error(f"--site {args.site!r} is not a directory")
    names = [n.strip() for n in args.sections.split(",") if n.strip()] if args.sections is not None else None
    if names is not None:
        try:
            plan.choose(plan.sections(profile, args.out_dir, "", None), names, None)
        except ValueError as err:
            parser.error(str(err))
    previous = None
    if names is not None or args.resume:
        try:
            previous = previous_results(args.out_dir, profile.mode)
        except ValueError as err:
            parser.error(str(err))
    command = ("bash eval_scripts/gpu_check.sh " + ("--cpu-smoke " if args.cpu_smoke else "")
               + (f"--sections {','.join(names)} " if names else "") + ("--resume " if args.resume else "") + args.out_dir)
    check = Check(profile, os.path.abspath(args.out_dir), sys.executable, args.site,
                  args.started or time.time(), command, previous)
    os.makedirs(os.path.join(check.out_dir, "logs"), exist_ok=True)
    return check.run(names, args.resume)
