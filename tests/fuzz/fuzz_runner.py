"""Longer fuzzing runs: what ``scripts/fuzz`` runs. Not collected by pytest.

Each hypothesis harness file (tests/fuzz/test_fuzz_*.py) is run for FUZZ_MINUTES, in rounds with a new
``--hypothesis-seed`` each and FUZZ_EXAMPLES sized to fill the remaining time; then, if atheris is installed,
each atheris target (tests/fuzz/atheris_harness.py) for FUZZ_MINUTES. Counts of inputs tried and failures go
to FUZZ_OUT/report.json and FUZZ_OUT/report.md (default build/fuzz); libFuzzer crash inputs to FUZZ_OUT too.

Environment: FUZZ_MINUTES (per harness, default 1, may be fractional), FUZZ_ENGINE (hypothesis, atheris or
both; default both when atheris imports), FUZZ_OUT, FUZZ_ONLY (substring filter on harness names).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _hypothesis(path: Path, budget: float, out: Path) -> dict[str, object]:
    deadline = time.monotonic() + budget
    examples, rounds, failures = 200, 0, []
    stats: dict[str, dict[str, float]] = {}
    wall = 0.0
    while time.monotonic() < deadline:
        seed = random.randrange(2**32)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            stats_file = f.name
        env = {**os.environ, "FUZZ_EXAMPLES": str(examples), "FUZZ_STATS": stats_file}
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", str(path), "-q", "-x", "-p", "no:cacheprovider",
                               f"--hypothesis-seed={seed}", "--timeout", str(int(budget) + 600)],
                              cwd=REPO, env=env, capture_output=True, text=True)
        took = time.monotonic() - start
        wall += took
        rounds += 1
        try:
            with open(stats_file) as f:
                for name, row in json.load(f).items():
                    acc = stats.setdefault(name, {"calls": 0, "seconds": 0.0})
                    acc["calls"] += row["calls"]
                    acc["seconds"] += row["seconds"]
        except (OSError, ValueError):
            pass
        os.unlink(stats_file)
        if proc.returncode not in (0, 5):
            log = out / f"fail-{path.stem}-{seed}.txt"
            log.write_text(proc.stdout + proc.stderr)
            failures.append({"seed": seed, "log": str(log), "summary": (proc.stdout.strip().splitlines() or ["?"])[-1]})
            break  # the hypothesis database replays the failure first in every later round
        remaining = deadline - time.monotonic()
        examples = max(50, min(200_000, int(examples * remaining / max(took, 0.5))))
    return {"engine": "hypothesis", "file": path.name, "rounds": rounds, "seconds": round(wall, 1),
            "harnesses": {name.split("::")[-1]: {"calls": int(row["calls"]),
                                                 "calls_per_s": round(row["calls"] / wall, 1) if wall else 0}
                          for name, row in sorted(stats.items())},
            "failures": failures}


def _atheris(target: str, budget: float, out: Path) -> dict[str, object]:
    corpus = out / f"corpus-{target}"
    corpus.mkdir(exist_ok=True)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(HERE / "atheris_harness.py"), target,
                           f"-max_total_time={max(1, int(budget))}", f"-artifact_prefix={out}/crash-{target}-",
                           "-print_final_stats=1", str(corpus)],
                          cwd=REPO, capture_output=True, text=True)
    took = time.monotonic() - start
    m = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr) or re.search(r"stat::number_of_executed_units: (\d+)",
                                                                               proc.stderr)
    runs = int(m.group(1)) if m else 0
    failures = []
    if proc.returncode != 0:
        log = out / f"fail-atheris-{target}.txt"
        log.write_text(proc.stderr[-20000:])
        crash = re.findall(r"Test unit written to (\S+)", proc.stderr)
        failures.append({"log": str(log), "input": crash[-1] if crash else None,
                         "summary": next((ln for ln in proc.stderr.splitlines() if "Uncaught" in ln or "Error" in ln),
                                         "?")})
    return {"engine": "atheris", "target": target, "seconds": round(took, 1), "runs": runs,
            "runs_per_s": round(runs / took, 1) if took else 0, "failures": failures}


def main() -> int:
    minutes = float(os.environ.get("FUZZ_MINUTES", "1"))
    out = Path(os.environ.get("FUZZ_OUT", REPO / "build" / "fuzz"))
    out.mkdir(parents=True, exist_ok=True)
    have_atheris = importlib.util.find_spec("atheris") is not None
    engine = os.environ.get("FUZZ_ENGINE", "both" if have_atheris else "hypothesis")
    only = os.environ.get("FUZZ_ONLY", "")
    results = []
    if engine in ("hypothesis", "both"):
        for path in sorted(HERE.glob("test_fuzz_*.py")):
            if path.name == "test_fuzz_corpus.py" or only not in path.stem:
                continue
            print(f"[fuzz] hypothesis {path.name} for {minutes} min", flush=True)
            results.append(_hypothesis(path, minutes * 60, out))
    if engine in ("atheris", "both"):
        if not have_atheris:
            print("[fuzz] atheris is not installed (pip install atheris)", file=sys.stderr)
            return 2
        targets = subprocess.run([sys.executable, str(HERE / "atheris_harness.py"), "--list"], capture_output=True,
                                 text=True, cwd=REPO).stdout.split()[1:]
        for target in targets:
            if only in target:
                print(f"[fuzz] atheris {target} for {minutes} min", flush=True)
                results.append(_atheris(target, minutes * 60, out))
    (out / "report.json").write_text(json.dumps(results, indent=1))
    lines = ["# Fuzz report", "", f"{minutes} min per harness, {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             "| engine | harness | inputs (calls) | per s | failures |", "|---|---|---|---|---|"]
    failed = 0
    for r in results:
        nfail = len(r["failures"])  # type: ignore[arg-type]
        failed += nfail
        if r["engine"] == "atheris":
            lines.append(f"| atheris | {r['target']} | {r['runs']} | {r['runs_per_s']} | {nfail} |")
        else:
            for name, row in r["harnesses"].items():  # type: ignore[attr-defined]
                lines.append(f"| hypothesis | {name} | {row['calls']} | {row['calls_per_s']} | {nfail} |")
    for r in results:
        for f in r["failures"]:  # type: ignore[attr-defined]
            lines.append(f"\n- {r.get('file') or r.get('target')}: {f['summary']} (log: {f['log']})")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
