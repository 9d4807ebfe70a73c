"""Builders: the case study's children, checked against golden YAML and Kubernetes' own schemas.

Regenerate the golden files after an intended change with
``PRFAAS_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_builders.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prfaas.engine.router.config import parse_router_config
from prfaas.engine.vllm.launch import vllm_argv
from prfaas.operator.api import models as api
from prfaas.operator.api.labels import LABEL_ROLE, child_name, label_value
from prfaas.operator.controller.builders import (
    ROUTER_BYTES_PER_MODELLED_BLOCK,
    ROUTER_CACHE_DIR,
    BuildError,
    ClusterTarget,
    PlanInputs,
    build_children,
    engine_launch,
    max_model_len,
    router_resources,
)
from prfaas.planner.plan import ClusterPlan, LinkPlan, Plan, RemotePrefill, RouterPlan

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
K8S = kubernetes_validate.latest_version()


def _docs() -> dict[str, dict[str, Any]]:
    text = (REPO / "crds" / "samples" / "case-study.yaml").read_text()
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


def _plan(decode_tp: int = 8, *, separate: bool = False, pd_prefill: int = 3) -> Plan:
    """The paper's split: 4 PrfaaS instances, 3 PD-P and 5 PD-D on H20, all at TP8 (one
    convertible pool of 8 kv_both engines; ``separate``: PD-P with another token budget, so
    PD-P and PD-D stay separate Deployments)."""
    return Plan(
        model="hybrid-1t",
        threshold_tokens=19400.0,
        offload_fraction=0.496,
        throughput_rps=3.24,
        kv_bytes_per_token=16800.0,
        clusters=[
            ClusterPlan("prfaas-h200", "dc-a", "prefill", "H200", 4, 8, 1, "published"),
            ClusterPlan(
                "pd-h20", "dc-b", "prefill", "H20", pd_prefill, 8, 1, "roofline",
                max_num_batched_tokens=16384 if separate else None,
            ),
            ClusterPlan(
                "pd-h20", "dc-b", "decode", "H20", 8 - pd_prefill, decode_tp, 1, "roofline"
            ),
        ],
        links=[LinkPlan("dc-a-to-dc-b", "dc-a", "dc-b", 100.0, 0.8, 13.0)],
        routers=[
            RouterPlan(
                "pd-h20", 19400.0, 16800.0, 0.0, [RemotePrefill("prfaas-h200", "dc-a-to-dc-b")]
            )
        ],
    )


def _inputs(
    plan: Plan | None = None, *, pod_monitor: bool = False, scheduling: dict[str, Any] | None = None
) -> PlanInputs:
    docs = _docs()
    pfc = docs["PrefillCluster"]
    pfc["spec"]["target"] = {"namespace": "prefill", "kubeconfigSecretRef": {"name": "dc-a"}}
    if scheduling:
        pfc["spec"]["scheduling"] = scheduling
    prefill = api.PrefillCluster.model_validate(pfc)
    decode = api.DecodeCluster.model_validate(docs["DecodeCluster"])
    sp = api.ServingPlan.model_validate(docs["ServingPlan"])
    return PlanInputs(
        name="hybrid-1t",
        namespace="default",
        spec=sp.spec,
        plan=plan or _plan(),
        clusters={
            "prfaas-h200": ClusterTarget(
                "prfaas-h200",
                "PrefillCluster",
                prefill.spec,
                api_server="prfaas-system/dc-a/kubeconfig",
                pod_monitor=pod_monitor,
            ),
            "pd-h20": ClusterTarget(
                "pd-h20", "DecodeCluster", decode.spec, pod_monitor=pod_monitor
            ),
        },
    )


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S, strict=True)


@pytest.mark.parametrize("cluster", ["prfaas-h200", "pd-h20"])
def test_case_study_children_match_golden_and_validate(cluster: str) -> None:
    children = build_children(_inputs())
    text = yaml.safe_dump_all(children[cluster], sort_keys=True)
    for obj in children[cluster]:
        _validate(obj)
    path = GOLDEN / f"case-study-{cluster}.yaml"
    if os.environ.get("PRFAAS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} differs; see the module docstring"


def test_engine_deployments_carry_the_plan() -> None:
    children = build_children(_inputs(_plan(separate=True)))
    by_name = {
        o["metadata"]["name"]: o
        for objs in children.values()
        for o in objs
        if o["kind"] == "Deployment"
    }
    decode = by_name["hybrid-1t-pd-h20-decode"]
    assert decode["kind"] == "Deployment" and decode["spec"]["replicas"] == 5
    pod = decode["spec"]["template"]["spec"]
    c = pod["containers"][0]
    argv = [*c["command"], *c["args"]]
    sp = _inputs().spec
    plan = _plan(separate=True)
    assert argv == vllm_argv(engine_launch(sp, plan.clusters[2], plan.dtype_bytes))
    assert argv[argv.index("--dtype") + 1] == "bfloat16"  # pinned: the plan's dtypeBytes 2
    kv = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert kv["kv_role"] == "kv_consumer" and kv["kv_load_failure_policy"] == "recompute"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"
    env = {e["name"]: e for e in c["env"]}
    assert env["UCX_TLS"]["value"] == "tcp,self"
    assert (
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    )
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert pod["terminationGracePeriodSeconds"] > 0
    prefill = by_name["hybrid-1t-prfaas-h200-prefill"]
    assert prefill["metadata"]["namespace"] == "prefill"
    pargs = prefill["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(pargs[pargs.index("--kv-transfer-config") + 1])["kv_role"] == "kv_producer"
    for obj in by_name.values():
        labels = obj["metadata"]["labels"]
        assert {"prfaas.io/plan", "prfaas.io/cluster", "prfaas.io/role"} <= set(labels)


def test_router_configmap_is_what_the_router_reads() -> None:
    cms = [
        o for o in build_children(_inputs(_plan(separate=True)))["pd-h20"]
        if o["kind"] == "ConfigMap"
    ]
    cfg = parse_router_config(cms[0]["data"]["router.yaml"])
    assert cfg.threshold_tokens == 19400.0 and cfg.kv_bytes_per_token == 16800.0
    assert cfg.local_datacenter == "dc-b"
    assert cfg.datacenters["dc-b"].decode == [
        "http://hybrid-1t-pd-h20-decode.default.svc.cluster.local:8000"
    ]
    # The prefill cluster lives behind another API server: a multi-cluster DNS name.
    assert cfg.datacenters["dc-a"].prefill == [
        "http://hybrid-1t-prfaas-h200-prefill.prefill.svc.clusterset.local:8000"
    ]
    assert cfg.links["dc-a"].capacity_gbps == 100.0 and cfg.links["dc-a"].headroom == 0.8


def test_scheduling_comes_from_the_cluster() -> None:
    sched = {
        "nodeSelector": {"gpu": "h200"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    dep = build_children(_inputs(scheduling=sched))["prfaas-h200"][0]
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h200"}
    assert pod["tolerations"] == sched["tolerations"]
    _validate(dep)


def test_instance_wider_than_a_node_becomes_a_leader_worker_set() -> None:
    children = build_children(_inputs(_plan(decode_tp=16)))
    lws = next(o for o in children["pd-h20"] if o["metadata"]["name"] == "hybrid-1t-pd-h20-decode")
    assert lws["kind"] == "LeaderWorkerSet" and lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    assert tmpl["size"] == 2 and lws["spec"]["replicas"] == 5
    for role in ("leaderTemplate", "workerTemplate"):
        pod = tmpl[role]["spec"]
        assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "8"}
        _validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": tmpl[role],
            }
        )
    leader = tmpl["leaderTemplate"]["spec"]["containers"][0]["args"][0]
    assert "--tensor-parallel-size 16" in leader and "--distributed-executor-backend ray" in leader


def test_pod_monitor_only_when_served() -> None:
    assert not any(
        o["kind"] == "PodMonitor" for objs in build_children(_inputs()).values() for o in objs
    )
    monitors = [
        o
        for objs in build_children(_inputs(pod_monitor=True)).values()
        for o in objs
        if o["kind"] == "PodMonitor"
    ]
    assert len(monitors) == 2
    assert monitors[0]["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_zero_instances_build_nothing_and_unknown_clusters_fail() -> None:
    plan = _plan()
    plan.clusters[1].instances = 0
    names = {o["metadata"]["name"] for o in build_children(_inputs(plan))["pd-h20"]}
    assert "hybrid-1t-pd-h20-prefill" not in names
    plan.clusters.append(ClusterPlan("elsewhere", "dc-c", "decode", "H20", 1))
    with pytest.raises(BuildError, match="elsewhere"):
        build_children(_inputs(plan))
    with pytest.raises(BuildError, match="not feasible"):
        build_children(_inputs(Plan(model="m", feasible=False, reason="too thin")))


def test_names_and_label_values_stay_within_limits() -> None:
    long = "x" * 80
    assert len(child_name(long, "cluster", "decode")) == 63
    assert child_name(long, "a") != child_name(long, "b")
    assert child_name("9lives", "a").startswith("p-")
    assert len(label_value(long)) <= 63 and label_value("short") == "short"


def test_router_config_always_carries_max_model_len() -> None:
    inputs = _inputs()
    assert max_model_len(inputs.spec) == 131072  # the catalog model's context
    cm = next(o for o in build_children(inputs)["pd-h20"] if o["kind"] == "ConfigMap")
    assert yaml.safe_load(next(iter(cm["data"].values())))["maxModelLen"] == 131072
    inputs.spec.engine.extra_args = ["--enforce-eager", "--max-model-len", "32768"]
    assert max_model_len(inputs.spec) == 32768
    inputs.spec.engine.extra_args = ["--max-model-len=8192"]
    assert max_model_len(inputs.spec) == 8192


def test_engine_pods_run_restricted_without_an_api_token() -> None:
    for objs in build_children(_inputs()).values():
        for obj in objs:
            if obj["kind"] == "Deployment" and obj["metadata"]["labels"][LABEL_ROLE] != "router":
                pod = obj["spec"]["template"]["spec"]
                assert pod["automountServiceAccountToken"] is False
                assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
                sc = pod["containers"][0]["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}


def test_the_cluster_engine_policy_limits_what_a_plan_may_run() -> None:
    inputs = _inputs()
    decode = inputs.clusters["pd-h20"].spec
    decode.engine_policy = api.EnginePolicy.model_validate(
        {
            "allowedImages": ["vllm/vllm-openai:*"],
            "allowedArgs": ["--enforce-eager"],
            "allowedEnv": ["VLLM_LOGGING_LEVEL"],
            "addCapabilities": ["IPC_LOCK"],
        }
    )
    children = build_children(inputs)["pd-h20"]  # the case study's plan is within it
    dep = next(o for o in children if o["kind"] == "Deployment")
    caps = dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
    inputs.spec.engine.image = "attacker/miner:latest"
    with pytest.raises(BuildError, match=r"image .attacker/miner:latest.*allowedImages"):
        build_children(inputs)
    inputs.spec.engine.image = "vllm/vllm-openai:v0.33.0"
    inputs.spec.engine.extra_args = ["--enforce-eager", "--worker-extension-cls=evil.Ext"]
    with pytest.raises(BuildError, match=r"\['--worker-extension-cls'\].*allowedArgs"):
        build_children(inputs)
    inputs.spec.engine.extra_args = []
    inputs.spec.engine.env = {"LD_PRELOAD": "/tmp/x.so"}
    with pytest.raises(BuildError, match=r"\['LD_PRELOAD'\].*allowedEnv"):
        build_children(inputs)


# ---------------------------------------------------------------------- the router pod's tokenizer
# The rendered router pod can load its tokenizer (issue #11, item 9): every path the loader
# writes is a writable volume (the root filesystem is read-only), and the tokenizer named by
# spec.model.source is found under the pod's HF_HOME. The pod's mounts are mapped onto temporary
# directories and the router's loader runs in a subprocess with the pod's env.
ROUTER_TOKENIZER = "acme/tiny-chat"


def _router_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    inputs = _inputs()
    inputs.spec.model.source = ROUTER_TOKENIZER
    inputs.spec.engine.env = {"HF_TOKEN": "t", "LD_PRELOAD": "/x.so"}
    dep = next(
        o
        for o in build_children(inputs)["pd-h20"]
        if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("router")
    )
    pod = dep["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def _seed_hub_cache(hf_home: Path) -> None:
    """What a download of ``ROUTER_TOKENIZER`` leaves in the hub cache (refs/main → a snapshot)."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["<unk>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["hello world"] * 10, trainer)
    repo = hf_home / "hub" / ("models--" + ROUTER_TOKENIZER.replace("/", "--"))
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    tok.save(str(snap / "tokenizer.json"))
    (snap / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    (snap / "config.json").write_text('{"model_type": "gpt2"}')


def test_the_router_pod_writes_only_to_its_volumes_and_finds_the_tokenizer(
    tmp_path: Path,
) -> None:
    pod, container = _router_pod()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]: tmp_path / m["name"]
        for m in container["volumeMounts"]
        if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
    }
    assert set(writable) == {ROUTER_CACHE_DIR, "/tmp"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_TOKEN"] == "t" and "LD_PRELOAD" not in env  # only what fetching needs

    def mapped(path: str) -> str:
        for mount, local in writable.items():
            if path == mount or path.startswith(mount + "/"):
                return str(local) + path[len(mount) :]
        raise AssertionError(f"{path} is not on a writable volume of the router pod")

    sandbox = {k: mapped(v) for k, v in env.items() if v.startswith("/")}
    assert {"HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME"} <= set(sandbox)
    for local in writable.values():
        local.mkdir()
    _seed_hub_cache(Path(sandbox["HF_HOME"]))
    script = (
        "from prfaas.engine.router.tokenizer import load_tokenizer\n"
        f"tok = load_tokenizer({ROUTER_TOKENIZER!r})\n"
        "print(type(tok).__name__, len(tok.encode_prompt('hello world')))\n"
    )
    run_env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        **sandbox,
    }
    out = subprocess.run(
        [sys.executable, "-P", "-c", script],
        env=run_env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    kind, n = out.stdout.split()
    assert kind == "HFPromptTokenizer" and int(n) > 0


def test_the_router_waits_for_its_tokenizer_before_liveness_counts() -> None:
    _, container = _router_pod()
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/livez"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def _engine_pods(children: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    pods = []
    for objs in children.values():
        for o in objs:
            if o["kind"] == "Deployment" and o["metadata"]["labels"][LABEL_ROLE] != "router":
                pods.append(o["spec"]["template"]["spec"])
            elif o["kind"] == "LeaderWorkerSet":
                t = o["spec"]["leaderWorkerTemplate"]
                pods += [t["leaderTemplate"]["spec"], t["workerTemplate"]["spec"]]
    return pods


def _prestop_arg(pod: dict[str, Any], flag: str) -> str:
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    return next(a.split("=", 1)[1] for a in command if a.startswith(f"--{flag}="))


def test_engines_drain_for_as_long_as_the_slo_and_output_lengths_allow() -> None:
    from prfaas.operator.controller.builders import DRAIN_EXIT_S, DRAIN_SETTLE_S, engine_drain

    inputs = _inputs(_plan(separate=True))
    pods = _engine_pods(build_children(inputs))
    assert len(pods) == 3
    # The case study: TTFT 10 s + 1024 tokens × 25 ms, plus 25 % → 45 s, after a 10 s settle.
    for pod in pods:
        assert pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][:2] == [
            "python3",
            "-c",
        ]
        assert _prestop_arg(pod, "max-wait") == "55" and _prestop_arg(pod, "settle") == "10"
        assert pod["terminationGracePeriodSeconds"] == 55 + DRAIN_EXIT_S
    # Longer outputs at a slower TPOT: a longer bound, not a constant.
    spec = inputs.spec.model_copy(
        update={
            "slo": inputs.spec.slo.model_copy(update={"tpot": "100ms"}),
            "workload": inputs.spec.workload.model_copy(
                update={
                    "output_length": api.LogNormalDistribution(
                        type="lognormal", mu=6.0, sigma=1.0, max=10**7
                    )
                }
            ),
        }
    )
    drain = engine_drain(spec)
    p99 = math.exp(6.0 + 2.3263 * 1.0)  # the untruncated log-normal's P99, ~4126 tokens
    assert drain.max_wait_s == pytest.approx(DRAIN_SETTLE_S + 1.25 * (10 + 0.1 * p99), abs=2)
    assert drain.grace_s == drain.max_wait_s + DRAIN_EXIT_S
    long = _engine_pods(build_children(PlanInputs(**{**_fields(inputs), "spec": spec})))
    assert {p["terminationGracePeriodSeconds"] for p in long} == {drain.grace_s}
    # One instance on several nodes: the leader drains, the Ray workers only wait with it.
    lws = _engine_pods(build_children(_inputs(_plan(decode_tp=16))))
    with_hook = [p for p in lws if "lifecycle" in p["containers"][0]]
    assert len(lws) == 4 and len(with_hook) == 3
    assert {p["terminationGracePeriodSeconds"] for p in lws} == {55 + DRAIN_EXIT_S}


def _fields(inputs: PlanInputs) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)}


def test_a_convertible_pool_is_one_deployment_of_kv_both_engines() -> None:
    children = build_children(_inputs())["pd-h20"]
    engines = [o for o in children if o["metadata"]["labels"]["prfaas.io/role"] == "both"]
    assert sorted(o["kind"] for o in engines) == ["Deployment", "Service"]
    dep = next(o for o in engines if o["kind"] == "Deployment")
    assert dep["metadata"]["name"] == "hybrid-1t-pd-h20-both" and dep["spec"]["replicas"] == 8
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert json.loads(args[args.index("--kv-transfer-config") + 1])["kv_role"] == "kv_both"
    assert args[args.index("--max-num-seqs") + 1] == str(_inputs().spec.engine.max_batch_size)
    assert not any(o["metadata"]["name"].endswith(("-prefill", "-decode")) for o in children)
    cm = next(o for o in children if o["kind"] == "ConfigMap")
    cfg = parse_router_config(cm["data"]["router.yaml"])
    assert cfg.discovery is not None
    (pool,) = [p for p in cfg.discovery.pools if p.role == "convertible"]
    assert (pool.service, pool.prefill) == ("hybrid-1t-pd-h20-both", 3)
    # Until the first EndpointSlice list, the pool's Service decodes (and prefills for itself).
    assert cfg.datacenters["dc-b"].convertible == {
        "http://hybrid-1t-pd-h20-both.default.svc.cluster.local:8000": "decode"
    }


def test_a_new_split_rewrites_only_the_router_configmap() -> None:
    before = {o["kind"] + "/" + o["metadata"]["name"]: o
              for o in build_children(_inputs())["pd-h20"]}
    after = {o["kind"] + "/" + o["metadata"]["name"]: o
             for o in build_children(_inputs(_plan(pd_prefill=5)))["pd-h20"]}
    assert before.keys() == after.keys()
    changed = sorted(k for k in before if before[k] != after[k])
    assert changed == ["ConfigMap/hybrid-1t-pd-h20-router"]  # no engine or router pod rolls
    cfg = parse_router_config(after["ConfigMap/hybrid-1t-pd-h20-router"]["data"]["router.yaml"])
    assert cfg.discovery is not None
    assert [p.prefill for p in cfg.discovery.pools if p.role == "convertible"] == [5]


def test_a_mooncake_pool_keeps_separate_deployments() -> None:
    inputs = _inputs()
    engine = inputs.spec.engine.model_copy(update={"connector": "MooncakeConnector"})
    inputs = replace(inputs, spec=inputs.spec.model_copy(update={"engine": engine}))
    names = {o["metadata"]["name"] for o in build_children(inputs)["pd-h20"]}
    assert {"hybrid-1t-pd-h20-prefill", "hybrid-1t-pd-h20-decode"} <= names
    assert "hybrid-1t-pd-h20-both" not in names


def _aggregated_plan(threshold: float | None = 19400.0, budget: int = 2048) -> Plan:
    """pd-h20 as one aggregated pool of 8 TP8 instances (token budget ``budget``), offloading
    above ``threshold`` to prfaas-h200 (``None``: no offload, PrfaaS idle)."""
    offload = threshold is not None
    return Plan(
        model="hybrid-1t",
        threshold_tokens=threshold,
        offload_fraction=0.4 if offload else 0.0,
        throughput_rps=2.6,
        kv_bytes_per_token=16800.0,
        clusters=[
            ClusterPlan("prfaas-h200", "dc-a", "prefill", "H200", 4 if offload else 0, 8, 1),
            ClusterPlan(
                "pd-h20", "dc-b", "decode", "H20", 8, 8, 1, "roofline",
                max_num_seqs=20, max_num_batched_tokens=budget, aggregated=True,
            ),
        ],
        links=[LinkPlan("dc-a-to-dc-b", "dc-a", "dc-b", 100.0, 0.8, 10.0 if offload else 0.0)],
        routers=[
            RouterPlan(
                "pd-h20", threshold, 16800.0, 0.0,
                [RemotePrefill("prfaas-h200", "dc-a-to-dc-b")] if offload else [],
            )
        ],
    )


def _args(dep: dict[str, Any]) -> list[str]:
    return list(dep["spec"]["template"]["spec"]["containers"][0]["args"])


def test_an_aggregated_pool_is_one_deployment_of_chunked_prefill_engines() -> None:
    children = build_children(_inputs(_aggregated_plan(budget=2048)))
    mine = children["pd-h20"]
    engines = [o for o in mine if o["metadata"]["labels"][LABEL_ROLE] == "aggregated"]
    assert sorted(o["kind"] for o in engines) == ["Deployment", "Service"]
    dep = next(o for o in engines if o["kind"] == "Deployment")
    assert dep["metadata"]["name"] == "hybrid-1t-pd-h20-aggregated"
    assert dep["spec"]["replicas"] == 8
    args = _args(dep)
    assert "--enable-chunked-prefill" in args
    assert args[args.index("--max-num-batched-tokens") + 1] == "2048"  # the plan's budget
    assert args[args.index("--max-num-seqs") + 1] == "20"
    assert json.loads(args[args.index("--kv-transfer-config") + 1])["kv_role"] == "kv_both"
    # One engine Deployment in the cluster: no PD-P, no PD-D, no kv_both convertible pool.
    deployments = [o["metadata"]["name"] for o in mine if o["kind"] == "Deployment"]
    assert sorted(deployments) == ["hybrid-1t-pd-h20-aggregated", "hybrid-1t-pd-h20-router"]
    for obj in mine:
        _validate(obj)
    # The flags are launch.py's: the builders add none of their own.
    plan = _aggregated_plan()
    launch = engine_launch(_inputs().spec, plan.clusters[1], plan.dtype_bytes)
    assert args == vllm_argv(launch)[3:]
    # PrfaaS still runs its prefill engines (the remote path).
    prfaas = {o["metadata"]["name"] for o in children["prfaas-h200"]}
    assert "hybrid-1t-prfaas-h200-prefill" in prfaas


def test_the_aggregated_pool_is_the_routers_local_decode_pool() -> None:
    mine = build_children(_inputs(_aggregated_plan()))["pd-h20"]
    cm = next(o for o in mine if o["kind"] == "ConfigMap")
    cfg = parse_router_config(cm["data"]["router.yaml"])
    local = cfg.datacenters["dc-b"]
    # Local requests: one aggregated instance prefills (chunked) and decodes; no PD-P pool.
    assert local.decode == ["http://hybrid-1t-pd-h20-aggregated.default.svc.cluster.local:8000"]
    assert local.prefill == [] and local.convertible == {}
    # Remote requests: PrfaaS prefills, the aggregated instance is the decode target.
    assert cfg.threshold_tokens == 19400.0 and cfg.remote_datacenters == ["dc-a"]
    assert cfg.datacenters["dc-a"].prefill == [
        "http://hybrid-1t-prfaas-h200-prefill.prefill.svc.clusterset.local:8000"
    ]
    assert cfg.discovery is not None
    assert [(p.role, p.service) for p in cfg.discovery.pools] == [
        ("decode", "hybrid-1t-pd-h20-aggregated")
    ]
    # The in-flight bound counts the aggregated instances' seats.
    assert cfg.admission.max_in_flight == 2 * 8 * _inputs().spec.engine.max_batch_size


def test_an_aggregated_pool_without_offload_routes_everything_locally() -> None:
    children = build_children(_inputs(_aggregated_plan(threshold=None)))
    assert not [o for o in children["prfaas-h200"] if o["kind"] == "Deployment"]
    cm = next(o for o in children["pd-h20"] if o["kind"] == "ConfigMap")
    cfg = parse_router_config(cm["data"]["router.yaml"])
    assert cfg.threshold_tokens is None and cfg.remote_datacenters == []


def test_aggregated_engines_with_mooncake_consume_kv_and_need_a_budget() -> None:
    inputs = _inputs(_aggregated_plan())
    engine = inputs.spec.engine.model_copy(update={"connector": "MooncakeConnector"})
    spec = inputs.spec.model_copy(update={"engine": engine})
    launch = engine_launch(spec, _aggregated_plan().clusters[1])
    argv = vllm_argv(launch)
    assert json.loads(argv[argv.index("--kv-transfer-config") + 1])["kv_role"] == "kv_consumer"
    assert "--enable-chunked-prefill" in argv
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        vllm_argv(replace(launch, max_num_batched_tokens=None))


def test_the_planned_aggregated_shape_deploys_its_budget(tmp_path: Path) -> None:
    """From the planner to the Deployment: the case study at a loose TPOT SLO deploys its
    aggregated+offload row (``spec.shape: auto``), whose token budget reaches vLLM's flags."""
    from prfaas.operator.api.manifests import load_manifests
    from prfaas.operator.api.translate import problems_from_manifests
    from prfaas.planner.solver import plan as make_plan

    docs = _docs()
    docs["ServingPlan"]["spec"]["slo"]["tpot"] = "200ms"
    path = tmp_path / "loose.yaml"
    path.write_text(yaml.safe_dump_all(list(docs.values())))
    (problem,) = problems_from_manifests(load_manifests(path).resources)
    planned = make_plan(problem)
    (row,) = [o for o in planned.shapes if o.chosen]
    assert row.shape == "aggregated+offload" and row.token_budget is not None
    inputs = _inputs(planned)
    dep = next(
        o for o in build_children(inputs)["pd-h20"]
        if o["metadata"]["name"] == "hybrid-1t-pd-h20-aggregated"
    )
    args = _args(dep)
    assert args[args.index("--max-num-batched-tokens") + 1] == str(row.token_budget)
    assert dep["spec"]["replicas"] == row.instances


def test_router_memory_holds_its_models_of_full_engine_caches() -> None:
    """The router's model of each engine's prefix cache is as large as the engine's KV memory
    (``cacheBlocks``); its pod asks for that memory on top of its base, or it would be
    OOM-killed once the models fill (the case study's PrfaaS H200 engines hold 1.6M blocks)."""
    plan = _plan()
    assert router_resources(_inputs(plan), _inputs(plan).clusters["pd-h20"]) == {
        "requests": {"cpu": "1", "memory": "1024Mi"}, "limits": {"memory": "2048Mi"}}
    tokens = {"prefill": 26_342_592, "decode": 4_000_000}
    for cp in plan.clusters:
        cp.kv_cache_tokens = tokens[cp.role] if cp.name == "prfaas-h200" or cp.role == "decode" \
            else 2_000_000
    inputs = _inputs(plan)
    blocks = 4 * 26_342_592 // 16 + 3 * 2_000_000 // 16 + 5 * 4_000_000 // 16
    extra = -(-blocks * ROUTER_BYTES_PER_MODELLED_BLOCK // (1 << 20))
    assert extra > 1200  # MiB: more than the old fixed 2Gi limit left for them
    resources = router_resources(inputs, inputs.clusters["pd-h20"])
    assert resources["requests"]["memory"] == f"{1024 + extra}Mi"
    assert resources["limits"]["memory"] == f"{2048 + extra}Mi"
    deployment = next(c for c in build_children(inputs)["pd-h20"]
                      if c["kind"] == "Deployment" and c["metadata"]["name"].endswith("router"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"] == resources
