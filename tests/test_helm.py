"""The Helm chart, with real Helm (helm-python-sdk): lint, a matrix of values, schema, wiring."""

import json
from pathlib import Path

import helm_python
import pytest
import yaml

from collector.settings import load_settings
from tests.k8s import documents, validate_all

pytestmark = pytest.mark.tier("tools")

SPEC_ALERTS = len(
    yaml.safe_load((Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "rules.spec.yaml").read_text())["alerts"]
)

CHART = Path(__file__).resolve().parent.parent / "helm" / "llamacloud-collector"
KEY = {"apiKey": {"value": "llx-test"}}

MATRIX: dict[str, dict] = {
    "defaults": KEY,
    "everything": {
        **KEY,
        "serviceMonitor": {
            "enabled": True,
            "labels": {"release": "kps"},
            "relabelings": [{"action": "replace", "targetLabel": "team", "replacement": "chat"}],
            "metricRelabelings": [{"action": "drop", "regex": "process_.*", "sourceLabels": ["__name__"]}],
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "dashboards": {"enabled": True, "namespace": "grafana"},
        "networkPolicy": {"enabled": True},
        "persistence": {"enabled": True},
        "podAnnotations": {"a": "b"},
        "priorityClassName": "high",
        "extraArgs": ["--log-level=debug"],
        "extraEnv": [{"name": "X", "value": "1"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"operator": "Exists"}],
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "existing-secret": {"apiKey": {"existingSecret": "llamacloud", "key": "token"}},
    "persistence": {**KEY, "persistence": {"enabled": True, "storageClassName": "fast"}},
    "three-shards": {**KEY, "sharding": {"shards": 3}, "persistence": {"enabled": True}, "serviceMonitor": {"enabled": True}},
    "network-policy": {
        **KEY,
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        },
    },
    "custom-labels": {
        **KEY,
        "podLabels": {"team": "chat"},
        "fullnameOverride": "llc",
        "serviceMonitor": {"enabled": True, "namespace": "monitoring", "labels": {"x": "y"}},
        "config": {
            "projectId": "p1",
            "sessionIds": ["s1", "s2"],
            "indexIds": ["i1"],
            "interval": 30,
            "errorRules": [{"type": "quota", "pattern": "quota"}],
            "buckets": {"turns": [1, 2, 4]},
            "discover": True,
        },
    },
    "web-config": {
        **KEY,
        "webConfig": {"existingSecret": "collector-web"},
        "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca", "readOnly": True}],
        "probes": {"liveness": {"periodSeconds": 7}, "readiness": {"enabled": False}},
        "serviceMonitor": {
            "enabled": True,
            "targetLabels": ["team"],
            "tlsConfig": {"ca": {"secret": {"name": "collector-web", "key": "ca.crt"}}, "serverName": "llamacloud-collector"},
            "basicAuth": {"username": {"name": "scrape", "key": "user"}, "password": {"name": "scrape", "key": "password"}},
        },
    },
    "as-subchart": {**KEY, "global": {"imageRegistry": "registry.example", "storageClass": "fast"}},
    "alerts-tuned": {
        **KEY,
        "slo": {"objective": 0.995},
        "prometheusRule": {
            "enabled": True,
            "alerts": {
                "LlamaCloudChatErrorRatioHigh": {"threshold": 0.05, "for": "5m", "severity": "critical"},
                "LlamaCloudChatSessionLastRunFailed": {"enabled": False},
            },
        },
    },
}


def render(values: dict, name: str = "rel") -> list[dict]:
    out = helm_python.Chart.load(str(CHART)).render(values=values, name=name, namespace="obs")
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml") for d in documents(text)]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def test_lint_strict_is_clean():
    report = helm_python.lint(str(CHART), KEY, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_matrix_renders_and_validates(case):
    objects = render(MATRIX[case])
    count = validate_all(objects)
    print(f"{case}: {count} objects validated")
    workload = next(o for o in objects if o["kind"] in ("Deployment", "StatefulSet"))
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    listen = next(a for a in container["args"] if a.startswith("--listen="))
    port = int(load_settings({"listen": listen.split("=", 1)[1]}, {}).listen.rsplit(":", 1)[1])
    assert port == 9742 == container["ports"][0]["containerPort"] and container["ports"][0]["name"] == "http-metrics"
    scheme = "HTTPS" if MATRIX[case].get("webConfig") else "HTTP"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics", "scheme": scheme}
    if "readinessProbe" in container or not MATRIX[case].get("probes"):
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics", "scheme": scheme}
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "384Mi"}}
    key_env = next(e for e in container["env"] if e["name"] == "LLAMA_CLOUD_API_KEY")
    ref = key_env["valueFrom"]["secretKeyRef"]
    api = MATRIX[case]["apiKey"]
    if api.get("existingSecret"):
        assert ref == {"name": "llamacloud", "key": "token"} and not by_kind(objects, "Secret")
    else:
        (secret,) = by_kind(objects, "Secret")
        assert ref == {"name": secret["metadata"]["name"], "key": "api-key"}
    text = json.dumps([o for o in objects if o["kind"] != "Secret"])
    assert "llx-test" not in text and not any("llx" in a for a in container["args"])
    service = by_kind(objects, "Service")[0]
    assert service["spec"]["ports"][0]["name"] == "http-metrics" and service["spec"]["ports"][0]["port"] == 9742
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    for monitor in by_kind(objects, "ServiceMonitor"):
        assert all(service["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
        assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["obs"]


def test_config_map_is_a_valid_collector_config(tmp_path):
    objects = render(MATRIX["custom-labels"])
    config = yaml.safe_load(by_kind(objects, "ConfigMap")[0]["data"]["config.yaml"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = load_settings({"config": str(path)}, {})
    assert settings.project_id == ("p1",) and settings.session_ids == ("s1", "s2") and settings.discovery is True
    assert settings.interval == 30 and settings.buckets.turns == (1, 2, 4)
    assert [r.type for r in settings.error_rules] == ["quota"]
    defaults = yaml.safe_load(by_kind(render(KEY), "ConfigMap")[0]["data"]["config.yaml"])
    path.write_text(yaml.safe_dump(defaults))
    assert load_settings({"config": str(path)}, {}).discovery is True


def test_shards_make_a_statefulset_with_ordinal_shards():
    objects = render(MATRIX["three-shards"])
    assert not by_kind(objects, "Deployment") and not by_kind(objects, "PersistentVolumeClaim")
    (sts,) = by_kind(objects, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert "--total-shards=3" in container["args"]
    shard = next(e for e in container["env"] if e["name"] == "COLLECTOR_SHARD")
    assert shard["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"


def test_persistence_mounts_the_state_path():
    objects = render(MATRIX["persistence"])
    (pvc,) = by_kind(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "fast"
    (deploy,) = by_kind(objects, "Deployment")
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "--state-path=/var/lib/llamacloud-collector/state.db" in container["args"]
    assert {"name": "state", "mountPath": "/var/lib/llamacloud-collector"} in container["volumeMounts"]


def test_network_policy_allows_metrics_in_and_dns_https_out():
    (policy,) = by_kind(render(MATRIX["network-policy"]), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http-metrics", "protocol": "TCP"}]
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
    out_ports = sorted((p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert out_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP")]


def test_dashboards_configmaps_are_labelled_and_hold_the_dashboards():
    maps = [m for m in by_kind(render(MATRIX["everything"]), "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]
    assert len(maps) == 4
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1" and m["metadata"]["namespace"] == "grafana"
        assert m["metadata"]["annotations"]["grafana_folder"] == "LlamaCloud"
        ((_name, body),) = m["data"].items()
        assert json.loads(body)["uid"].startswith("llamacloud-")


def test_prometheus_rule_follows_values():
    (rule,) = by_kind(render(MATRIX["alerts-tuned"]), "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "LlamaCloudChatSessionLastRunFailed" not in alerts and len(alerts) == SPEC_ALERTS - 1
    tuned = alerts["LlamaCloudChatErrorRatioHigh"]
    assert "> 0.05" in tuned["expr"] and tuned["for"] == "5m" and tuned["labels"]["severity"] == "critical"
    assert "(1 - 0.995)" in alerts["LlamaCloudChatErrorBudgetBurnFast"]["expr"]
    for name in ("Fast", "High", "Medium", "Slow"):  # the description shows the objective in force
        assert "the 0.995 success objective" in alerts[f"LlamaCloudChatErrorBudgetBurn{name}"]["annotations"]["description"]
    assert "{{ $labels.job }}" in tuned["annotations"]["description"]  # Prometheus templates survive Helm
    default = by_kind(render({**KEY, "prometheusRule": {"enabled": True}}), "PrometheusRule")[0]
    shipped = yaml.safe_load((CHART.parent.parent / "deploy" / "prometheus" / "alerts.yaml").read_text())
    rendered = {r["alert"]: r for g in default["spec"]["groups"] for r in g["rules"] if "alert" in r}
    for rule in shipped["groups"][0]["rules"]:
        mine = rendered[rule["alert"]]
        assert (mine["expr"].strip(), mine["for"], mine["labels"]) == (rule["expr"].strip(), rule["for"], rule["labels"])
        assert mine["annotations"] == rule["annotations"]


@pytest.mark.parametrize(
    "values,fragment",
    [
        ({**KEY, "sharding": {"shards": "3"}}, "/sharding/shards"),
        ({**KEY, "unknownKey": 1}, "additional properties 'unknownKey'"),
        ({**KEY, "config": {"interval": -5}}, "/config/interval"),
        ({**KEY, "serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval"),
        ({**KEY, "prometheusRule": {"alerts": {"X": {"severity": "loud"}}}}, "severity"),
        ({**KEY, "slo": {"objective": 1.5}}, "/slo/objective"),
        ({**KEY, "serviceMonitor": {"scheme": "ftp"}}, "/serviceMonitor/scheme"),
        ({**KEY, "probes": {"liveness": {"periodSeconds": 0}}}, "/probes/liveness/periodSeconds"),
        ({**KEY, "webConfig": {"secret": "x"}}, "additional properties 'secret'"),
    ],
)
def test_schema_rejects_wrong_values(values, fragment):
    with pytest.raises(helm_python.HelmValuesError) as err:
        render(values)
    assert fragment in str(err.value)


def test_missing_key_fails_with_a_message():
    with pytest.raises(helm_python.HelmError, match="apiKey.existingSecret"):
        render({})


def test_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(tree, prefix=""):
        for k, v in tree.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v and path not in ("resources", "podSecurityContext", "securityContext"):
                yield from keys(v, path + ".")
            else:
                yield path

    missing = [k for k in keys(values) if f"`{k}`" not in readme]
    assert missing == []


def collector_container(objects: list[dict]) -> tuple[dict, dict]:
    (deploy,) = by_kind(objects, "Deployment")
    return deploy["spec"]["template"]["spec"]["containers"][0], deploy["spec"]["template"]["spec"]


def test_web_config_secret_is_mounted_passed_and_probed_over_https():
    objects = render(MATRIX["web-config"])
    container, pod = collector_container(objects)
    assert "--web-config=/etc/llamacloud-collector/web/web-config.yml" in container["args"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["web-config"]["mountPath"] == "/etc/llamacloud-collector/web" and mounts["ca"]["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["web-config"]["secret"]["secretName"] == "collector-web" and "ca" in volumes
    probe = container["livenessProbe"]
    assert probe["httpGet"]["scheme"] == "HTTPS" and probe["periodSeconds"] == 7 and "enabled" not in probe
    assert "readinessProbe" not in container
    (monitor,) = by_kind(objects, "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["serverName"] == "llamacloud-collector"
    assert endpoint["basicAuth"]["password"] == {"name": "scrape", "key": "password"}
    assert monitor["spec"]["targetLabels"] == ["team"]
    plain, _ = collector_container(render(KEY))
    assert plain["livenessProbe"]["httpGet"]["scheme"] == "HTTP" and "--web-config" not in " ".join(plain["args"])
    basic_only, _ = collector_container(render({**KEY, "webConfig": {"existingSecret": "w", "tls": False}}))
    assert basic_only["readinessProbe"]["httpGet"]["scheme"] == "HTTP"  # probes need no auth, only TLS


def test_the_chart_works_as_a_subchart(tmp_path):
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: llamacloud-collector\n    version: '>=0'\n"
    )
    (parent / "values.yaml").write_text(
        "global:\n  imageRegistry: registry.example\n"
        "llamacloud-collector:\n  apiKey:\n    existingSecret: llamacloud\n"
        "  serviceMonitor:\n    enabled: true\n"
    )
    import shutil

    shutil.copytree(CHART, parent / "charts" / "llamacloud-collector")
    out = helm_python.Chart.load(str(parent)).render(values={}, name="platform", namespace="obs")
    objects = [d for path, text in sorted(out.items()) if path.endswith(".yaml") for d in documents(text)]
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "ServiceMonitor"}
    assert validate_all(objects) == len(objects)


def test_readme_lists_every_alert_and_its_params():
    from scripts.rules import load_spec

    readme = (CHART / "README.md").read_text()
    for alert in load_spec()["alerts"]:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{alert['alert']}` |")), None)
        assert row is not None, alert["alert"]
        for param in alert["params"]:
            assert f"`{param}`" in row, (alert["alert"], param)


def test_scrape_classic_histograms_renders_a_valid_service_monitor():
    docs = render({**KEY, "serviceMonitor": {"enabled": True, "scrapeClassicHistograms": True}})
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["scrapeClassicHistograms"] is True
    validate_all(docs)
    (plain,) = by_kind(render({**KEY, "serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    assert "scrapeClassicHistograms" not in plain["spec"]
    # off by default: the shipped queries read the classic series or else the native histogram (issue 29)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["serviceMonitor"]["scrapeClassicHistograms"] is False


def notes(values: dict) -> str:
    out = helm_python.Chart.load(str(CHART)).render(values={**KEY, **values}, name="rel", namespace="obs")
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


@pytest.mark.parametrize(
    ("values", "warned"),
    [
        ({}, False),  # 64 + 2 x 32 + 8 x 1 + 80 B x 1,000,000 (76.3) + 48 = 260.3 MiB under the default 384Mi
        ({"resources": {"limits": {"memory": "256Mi"}}}, True),  # the old limit: below the budget of the defaults
        ({"resources": {"limits": {"memory": "256Mi"}}, "config": {"maxEventsPerSession": 900_000}}, False),  # 252.6
        ({"config": {"maxResponseBytes": 256 << 20}}, True),  # the old default cap: OOM-killed by one large answer
        ({"config": {"maxResponseBytes": 256 << 20}, "resources": {"limits": {"memory": "1Gi"}}}, False),
        ({"resources": {"limits": {"memory": "272M"}}}, True),  # decimal units: 272 MB < 260.3 MiB
        ({"config": {"maxConcurrency": 64}, "resources": {"limits": {"memory": "300Mi"}}}, True),
        ({"resources": {"limits": {}}}, False),  # no limit: nothing to compare with
        ({"sizing": {"sessions": 240_000}}, False),  # 260.3 + 0.5 x 240 = 380.3 MiB: the default 384Mi holds it
        ({"sizing": {"sessions": 260_000}}, True),  # 390.3 MiB
        ({"sizing": {"sessions": 260_000}, "sharding": {"shards": 2}}, False),  # each pod holds half
        ({"sizing": {"sessions": 1_000_000}, "resources": {"limits": {"memory": "768Mi"}}}, False),  # 760.3 MiB
        ({"sizing": {"sessions": 1_000_000}}, True),
    ],
)
def test_notes_warn_when_the_memory_limit_cannot_hold_the_response_cap(values, warned):
    assert ("WARNING: resources.limits.memory" in notes(values)) is warned


def test_the_response_cap_reaches_the_collector_and_is_bounded_by_the_schema(tmp_path):
    objects = render({**KEY, "config": {"maxResponseBytes": 8 << 20}})
    path = tmp_path / "config.yaml"
    path.write_text(by_kind(objects, "ConfigMap")[0]["data"]["config.yaml"])
    assert load_settings({"config": str(path)}, {}).max_response_bytes == 8 << 20
    with pytest.raises(Exception, match="maxResponseBytes"):
        render({**KEY, "config": {"maxResponseBytes": 1024}})


def test_notes_say_what_shards_cost_and_that_the_request_budget_is_divided_among_them():
    text = notes({**KEY, "sharding": {"shards": 3}, "config": {"maxRequestsPerSecond": 12}})
    assert "listing calls are 3 times one collector's" in text
    assert "config.maxRequestsPerSecond=12, is the deployment's: each pod takes 1/3 of it" in text
    objects = render({**KEY, "sharding": {"shards": 3}, "config": {"maxRequestsPerSecond": 12}})
    pod = next(o for o in objects if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    assert "--total-shards=3" in pod["args"] and "max_requests_per_second: 12\n" in config  # 12 / 3 a second per pod
    assert "maxRequestsPerSecond" not in notes({**KEY, "sharding": {"shards": 3}})


def runaway_rule(values: dict) -> dict:
    (rule,) = by_kind(render({**KEY, **values}), "PrometheusRule")
    return next(r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == "LlamaCloudChatRunawayAgents")


@pytest.mark.parametrize("bound", [0, 0.5, 2.5, 12.8, 32, 128, 999999, 1_000_000, 1_048_576, 67_108_864])
def test_the_chart_spells_a_runaway_bound_as_the_collector_writes_its_le(bound):
    """The chart's helper against the collector's own spelling (floatToGoString): a bound written as "32"
    instead of "32.0" would match no series and the alert would never fire."""
    from scripts.rules import le

    buckets = sorted({0.1, 1.0, float(bound)})
    rule = runaway_rule(
        {
            "config": {"buckets": {"turns": buckets}},
            "prometheusRule": {"enabled": True, "alerts": {"LlamaCloudChatRunawayAgents": {"turns": bound}}},
        }
    )
    assert f'llamacloud_chat_run_turns_bucket{{le="{le(bound)}"}}' in rule["expr"]
    assert 'llamacloud_chat_run_tool_calls_bucket{le="64.0"}' in rule["expr"]  # the default, untouched


def test_the_runaway_alert_follows_its_chart_values_and_refuses_a_bound_without_a_bucket():
    tuned = runaway_rule(
        {
            "prometheusRule": {
                "enabled": True,
                "alerts": {
                    "LlamaCloudChatRunawayAgents": {
                        "threshold": 0.1,
                        "min_runs": 50,
                        "window": "1h",
                        "turns": 24,
                        "tool_calls": 0,  # a bound (no tool calls at all), not "unset"
                        "for": "30m",
                    }
                },
            },
        }
    )
    expr = tuned["expr"]
    assert 'turns_bucket{le="24.0"}[1h]' in expr and 'tool_calls_bucket{le="0.0"}[1h]' in expr
    assert expr.count("> 0.1\n") == 2 and expr.count(">= 50\n") == 2 and tuned["for"] == "30m"
    description = tuned["annotations"]["description"]
    assert "last 1h" in description and "over 24 turns, or over 0 tool calls" in description
    assert "alert above 0.1 of at least 50 runs" in description and "{{ $labels.measure }}" in description
    with pytest.raises(
        helm_python.HelmError, match=r"LlamaCloudChatRunawayAgents\.turns is 30, not a bound of config\.buckets\.turns"
    ):
        runaway_rule({"prometheusRule": {"enabled": True, "alerts": {"LlamaCloudChatRunawayAgents": {"turns": 30}}}})
    with pytest.raises(helm_python.HelmError, match=r"\.tool_calls is 64, not a bound of config\.buckets\.tool_calls"):
        runaway_rule({"config": {"buckets": {"tool_calls": [1, 10, 100]}}, "prometheusRule": {"enabled": True}})
    custom = runaway_rule(
        {
            "config": {"buckets": {"tool_calls": [1, 10, 100]}},
            "prometheusRule": {"enabled": True, "alerts": {"LlamaCloudChatRunawayAgents": {"tool_calls": 100}}},
        }
    )
    assert 'tool_calls_bucket{le="100.0"}' in custom["expr"]
    off = {**KEY, "prometheusRule": {"enabled": True, "alerts": {"LlamaCloudChatRunawayAgents": {"enabled": False, "turns": 30}}}}
    (rule,) = by_kind(render(off), "PrometheusRule")  # a disabled alert checks nothing
    assert not any(r.get("alert") == "LlamaCloudChatRunawayAgents" for g in rule["spec"]["groups"] for r in g["rules"])


@pytest.mark.parametrize(
    ("config", "said"),
    [
        ({}, None),
        ({"projectId": "p1"}, None),  # one project, as before several: a string still
        ({"projectId": ["p1"]}, None),
        ({"projectId": ["p1", "p2", "p3"]}, "It watches 3 projects (config.projectId)"),
        ({"allProjects": True}, "It watches every project of the organization"),
    ],
)
def test_notes_say_which_projects_are_watched_and_a_project_id_is_one_or_a_list(config, said, tmp_path):
    text = notes({"config": config})
    assert ("watches" in text and "project" in text) is (said is not None)
    if said:
        assert said in text
    (configmap,) = [o for o in render({**KEY, "config": config}) if o["kind"] == "ConfigMap"]
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    settings = load_settings({"config": str(path)}, {})
    ids = config.get("projectId", ())
    assert settings.project_id == ((ids,) if isinstance(ids, str) else tuple(ids))
    assert settings.all_projects is bool(config.get("allProjects"))
