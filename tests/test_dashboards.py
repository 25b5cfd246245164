"""Dashboards import cleanly: stable uids, a $datasource variable, units and descriptions, links."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


def panels(board):
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def test_three_dashboards_with_stable_unique_uids():
    boards = [json.loads(f.read_text()) for f in FILES]
    assert sorted(b["uid"] for b in boards) == ["llamacloud-chat-overview", "llamacloud-chat-session",
                                                "llamacloud-collector-health"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dashboard_conventions(path):
    text = path.read_text()
    board = json.loads(text)
    assert "${DS_" not in text and '"__inputs"' not in text
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert board["links"] and board["links"][0]["tags"] == ["llamacloud"] and "llamacloud" in board["tags"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids))
    for p in panels(board):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["description"] and p["fieldConfig"]["defaults"]["unit"], p["title"]
        for target in p["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'job=~"$job"' in target["expr"] or target["expr"] == "1 - $slo", target["expr"]
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24
    uids = re.findall(r'"uid":\s*"([^"]+)"', text)
    assert set(uids) <= {board["uid"], "${datasource}"}
