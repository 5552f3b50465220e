"""RM workbench page times (issue 16): the pages an RM opens, on a home with a daily run.

    python benchmarks/bench_workbench.py --home .nba [--clients 20] [--out FILE]

Starts the API app (with the workbench) on uvicorn in this process on a loopback port, signs an RM in
(the RM with the longest list of the latest daily run; a fresh ``rm`` key), then times with httpx, one
request at a time: the list page, each client page of the first ``--clients`` clients of the list, each
of their three charts (SVG), a filtered list, and recording an outcome from the form (POST, then the
list it redirects to). Prints one JSON object with medians and p90s in milliseconds, the page sizes and
the machine; writes it to ``--out`` too. The outcomes it records are real (they stay in the home's
ledger), so use a scratch home or the demo's.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import sys
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provenance import commit, machine  # noqa: E402


def _ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "median_ms": round(statistics.median(xs) * 1000, 1),
            "p90_ms": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))] * 1000, 1),
            "max_ms": round(xs[-1] * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import httpx
    import pandas as pd
    import uvicorn

    from apps.api.app import create_app
    from apps.api.security import KeyStore
    from nba.home import Home

    home = Home(args.home.resolve())
    days = sorted(p.name for p in home.daily.iterdir() if (p / "decisions.parquet").exists())
    if not days:
        sys.exit(f"no daily run in {home.daily} (run nba daily first)")
    d = pd.read_parquet(home.daily / days[-1] / "decisions.parquet")
    d = d[~d.control_group]
    rm = str(d.rm_id.value_counts().index[0])
    key = KeyStore.open(home).create("rm", rm_id=rm, label="bench_workbench")[1]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    server = uvicorn.Server(uvicorn.Config(create_app(home, poll=False), host="127.0.0.1", port=port,
                                           log_config=None))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(base + "/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    ready_s = time.perf_counter() - t0

    def csrf(html: str) -> str:
        return re.search(r'name="csrf" value="([^"]+)"', html).group(1)

    res: dict = {"date": date.today().isoformat(), "home": str(home.root), "day": days[-1], "rm_id": rm,
                 "listed_actions_of_rm": int((d.rm_id == rm).sum()), "clients_in_bank": None,
                 "startup_to_ready_s": round(ready_s, 2)}
    try:
        res["clients_in_bank"] = int(pd.read_parquet(home.daily / days[-1] / "states.parquet",
                                                     columns=["customer_id"]).shape[0])
    except (FileNotFoundError, OSError):
        pass
    with httpx.Client(base_url=base, timeout=120, follow_redirects=True) as http:
        t = time.perf_counter()
        page = http.get("/login")
        http.post("/login", data={"key": key, "csrf": csrf(page.text)}).raise_for_status()
        res["sign_in_ms"] = round((time.perf_counter() - t) * 1000, 1)
        lists, pages, svgs, filtered, posts = [], [], {"balance": [], "state": [], "contacts": []}, [], []
        for _ in range(10):
            t = time.perf_counter()
            page = http.get("/")
            lists.append(time.perf_counter() - t)
        res["list_page_bytes"] = len(page.content)
        ids = list(dict.fromkeys(re.findall(r'href="/clients/([^"]+)"', page.text)))[:args.clients]
        decisions = re.findall(r'<tr id="d-([^"]+)"', page.text)
        for cid in ids:
            t = time.perf_counter()
            view = http.get(f"/clients/{cid}")
            pages.append(time.perf_counter() - t)
            view.raise_for_status()
            for name in svgs:
                t = time.perf_counter()
                http.get(f"/clients/{cid}/charts/{name}.svg").raise_for_status()
                svgs[name].append(time.perf_counter() - t)
        res["client_page_bytes"] = len(view.content)
        for fam in ("care_contact", "product_offer", "retention_offer") * 3:
            t = time.perf_counter()
            http.get(f"/?family={fam}&status=open").raise_for_status()
            filtered.append(time.perf_counter() - t)
        for i, decision_id in enumerate(decisions[:10]):
            page = http.get("/")
            idem = re.search(r'name="idem" value="([^"]+)"', page.text).group(1)
            t = time.perf_counter()
            r = http.post("/outcomes", data={"decision_id": decision_id, "outcome": "reached", "csrf": csrf(page.text),
                                             "idem": f"{idem}b{i}", "note": "bench"})
            posts.append(time.perf_counter() - t)
            r.raise_for_status()
        res.update({"list_page": _ms(lists), "client_page": _ms(pages),
                    **{f"chart_{k}_svg": _ms(v) for k, v in svgs.items()},
                    "filtered_list": _ms(filtered), "outcome_post_and_list": _ms(posts)})
    server.should_exit = True
    res["machine"], res["commit"] = machine(), commit()
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
