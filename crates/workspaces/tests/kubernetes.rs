//! The Kubernetes driver against a stand-in API server on a loopback port (no cluster can
//! run here): every request the driver makes is asserted, in order, with the bodies that
//! matter (what the Pod may do, where its key comes from, what the policy denies).

use coditect_proto::{Secret, TenantId, WorkspaceId};
use coditect_testkit::kube_api::FakeKubeApi;
use coditect_workspaces::kubernetes::{KubernetesConfig, KubernetesRuntime};
use coditect_workspaces::{AgentSetup, InstanceRef, Phase, Resources, Runtime, Scope, Spec};
use serde_json::{Value, json};
use std::time::Duration;

const HUB_URL: &str = "http://coditect-hub.coditect.svc:8080";
const APPLY: &str = "?&force=true&fieldManager=coditect-hub";

struct Rig {
    api: FakeKubeApi,
    _dir: tempfile::TempDir,
    runtime: KubernetesRuntime,
}

fn config(kubeconfig: std::path::PathBuf) -> KubernetesConfig {
    KubernetesConfig {
        scope: Scope::parse("kt").expect("scope"),
        kubeconfig: Some(kubeconfig),
        hub_url: HUB_URL.into(),
        default_image: "coditect-workspace:latest".into(),
        namespace_prefix: "coditect-".into(),
        home_size: "5Gi".into(),
        storage_class: Some("fast".into()),
        timeout: Duration::from_secs(5),
    }
}

async fn rig() -> Rig {
    let api = FakeKubeApi::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let runtime = KubernetesRuntime::new(config(kubeconfig));
    Rig {
        api,
        _dir: dir,
        runtime,
    }
}

fn spec(instance: InstanceRef, generation: u64, key: &str) -> Spec {
    Spec {
        instance,
        generation,
        image: Some("registry.example/ws:1".into()),
        command: Some("sleep infinity".into()),
        env: [("EDITOR".to_string(), "vi".to_string())].into(),
        resources: Resources {
            cpu_millis: Some(500),
            memory_mb: Some(256),
            pids: Some(256),
        },
        network: true,
        agent: AgentSetup {
            key: Secret::new(key),
            hub_socket_dir: "/nonexistent".into(),
            hub_socket_name: "hub.sock".into(),
            instance_token: format!("tok-{generation}"),
        },
    }
}

fn lines(api: &FakeKubeApi) -> Vec<String> {
    api.take_requests().iter().map(|r| r.line()).collect()
}

fn env_of(pod: &Value) -> Vec<(String, String)> {
    pod["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_workspace_is_a_pod_a_claim_and_a_secret_in_its_tenants_namespace() {
    let Rig { api, runtime, _dir } = rig().await;
    let instance = InstanceRef {
        tenant: TenantId::new(),
        workspace: WorkspaceId::new(),
    };
    let ns = format!("coditect-{}", instance.tenant);
    let pod_path = format!("/api/v1/namespaces/{ns}/pods/ws-{}", instance.workspace);
    let claim_path = format!(
        "/api/v1/namespaces/{ns}/persistentvolumeclaims/ws-{}-home",
        instance.workspace
    );
    let secret_path = format!(
        "/api/v1/namespaces/{ns}/secrets/ws-{}-agent",
        instance.workspace
    );
    let policy_path =
        format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/deny-ingress");

    runtime.probe().await.expect("probe");
    assert_eq!(lines(&api), ["GET /version"]);

    // Start: the tenant's namespace and policy, the home's claim and the key by apply;
    // then the Pod, created.
    let key = "cdk_first_key_0123456789";
    let observed = runtime.start(&spec(instance, 1, key)).await.expect("start");
    assert_eq!(observed.generation, 1);
    assert_eq!(observed.phase, Phase::Created, "pending: nothing ran yet");
    let requests = api.take_requests();
    let got: Vec<String> = requests.iter().map(|r| r.line()).collect();
    assert_eq!(
        got,
        [
            format!("GET {pod_path}"),
            format!("PATCH /api/v1/namespaces/{ns}{APPLY}"),
            format!("PATCH {policy_path}{APPLY}"),
            format!("PATCH {claim_path}{APPLY}"),
            format!("PATCH {secret_path}{APPLY}"),
            format!("GET {pod_path}"),
            format!("POST /api/v1/namespaces/{ns}/pods?"),
            format!("GET {pod_path}"),
        ]
    );
    for r in requests.iter().filter(|r| r.method == "PATCH") {
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }
    let body = |i: usize| requests[i].body.clone().expect("a body");
    let labels = json!({
        "dev.coditect.scope": "kt",
        "dev.coditect.tenant": instance.tenant.to_string(),
    });
    assert_eq!(body(1)["metadata"]["labels"], labels);
    assert_eq!(
        body(2)["spec"],
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        "every pod of the namespace, no ingress allowed"
    );
    assert_eq!(
        body(3)["spec"],
        json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}},
            "storageClassName": "fast",
        })
    );
    use base64::Engine;
    let secret = body(4);
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["data"]["agent-key"].as_str(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(key)
                .as_str()
        )
    );

    let pod = body(6);
    assert_eq!(
        pod["metadata"]["labels"],
        json!({
            "dev.coditect.scope": "kt",
            "dev.coditect.tenant": instance.tenant.to_string(),
            "dev.coditect.workspace": instance.workspace.to_string(),
            "dev.coditect.generation": "1",
        })
    );
    let ps = &pod["spec"];
    assert_eq!(ps["restartPolicy"], "Never");
    assert_eq!(
        ps["automountServiceAccountToken"], false,
        "no cluster credential inside"
    );
    assert_eq!(ps["enableServiceLinks"], false);
    assert_eq!(
        ps["securityContext"],
        json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "runAsNonRoot": true,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = &ps["containers"][0];
    assert_eq!(c["image"], "registry.example/ws:1");
    assert_eq!(c["command"], json!(["codi-monitor", "agent"]));
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "500m", "memory": "256Mi"},
               "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "privileged": false,
               "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "home", "mountPath": "/home/coder"},
               {"name": "agent-key", "mountPath": "/run/coditect/secrets", "readOnly": true}])
    );
    assert_eq!(
        ps["volumes"],
        json!([{"name": "home", "persistentVolumeClaim": {"claimName": format!("ws-{}-home", instance.workspace)}},
               {"name": "agent-key", "secret": {"secretName": format!("ws-{}-agent", instance.workspace), "defaultMode": 0o444}}])
    );
    let env = env_of(&pod);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("CODITECT_HUB_URL"), Some(HUB_URL));
    assert_eq!(get("CODITECT_HUB_SOCKET"), None);
    assert_eq!(
        get("CODITECT_AGENT_KEY_FILE"),
        Some("/run/coditect/secrets/agent-key")
    );
    assert_eq!(get("CODITECT_WORKSPACE_COMMAND"), Some("sleep infinity"));
    assert_eq!(get("EDITOR"), Some("vi"));
    assert!(
        !pod.to_string().contains(key),
        "the key is in the secret only, never in the pod"
    );

    // The kubelet runs it: observed running, listed by the scope's label.
    api.set_pod_status(
        &pod_path,
        json!({"phase": "Running", "containerStatuses": [{"name": "workspace", "ready": true,
               "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}}]}),
    );
    let o = runtime
        .inspect(instance)
        .await
        .expect("inspect")
        .expect("a pod");
    assert_eq!(o.phase, Phase::Running);
    let listed = runtime.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, instance);
    assert_eq!(
        lines(&api),
        [
            format!("GET {pod_path}"),
            "GET /api/v1/pods?&labelSelector=dev.coditect.scope%3Dkt".to_string(),
        ]
    );

    // Starting what runs returns it: one GET, never a second pod.
    let again = runtime
        .start(&spec(instance, 1, key))
        .await
        .expect("start again");
    assert_eq!(again.phase, Phase::Running);
    assert_eq!(lines(&api), [format!("GET {pod_path}")]);

    // A pool claim rotates the key: the secret only.
    runtime
        .rekey(instance, &Secret::new("cdk_second_key"))
        .await
        .expect("rekey");
    let r = api.take_requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].line(), format!("PATCH {secret_path}{APPLY}"));
    assert_eq!(
        api.object(&secret_path).expect("secret")["data"]["agent-key"],
        base64::engine::general_purpose::STANDARD.encode("cdk_second_key")
    );

    // The agent is killed for memory: observed as an OOM exit.
    api.set_pod_status(
        &pod_path,
        json!({"phase": "Failed", "containerStatuses": [{"name": "workspace", "ready": false,
               "restartCount": 0, "image": "x", "imageID": "",
               "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
    );
    let o = runtime
        .inspect(instance)
        .await
        .expect("inspect")
        .expect("a pod");
    assert_eq!(
        o.phase,
        Phase::Exited {
            code: Some(137),
            oom: true
        }
    );
    api.take_requests();

    // A relaunch (generation 2) replaces the pod of generation 1; while the old one is
    // still terminating the driver says so (transient), and goes on once it is gone.
    api.set_linger_pods(true);
    let err = runtime
        .start(&spec(instance, 2, "cdk_third_key"))
        .await
        .expect_err("the old pod lingers");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("still terminating"), "{err}");
    assert_eq!(
        lines(&api),
        [
            format!("GET {pod_path}"),
            format!("PATCH /api/v1/namespaces/{ns}{APPLY}"),
            format!("PATCH {policy_path}{APPLY}"),
            format!("PATCH {claim_path}{APPLY}"),
            format!("PATCH {secret_path}{APPLY}"),
            format!("GET {pod_path}"),
            // The older launch's pod goes first, at once.
            format!("DELETE {pod_path}?"),
            format!("POST /api/v1/namespaces/{ns}/pods?"),
        ]
    );
    api.set_linger_pods(false);
    api.remove(&pod_path);
    let o = runtime
        .start(&spec(instance, 2, "cdk_third_key"))
        .await
        .expect("relaunch");
    assert_eq!(o.generation, 2);
    assert_eq!(
        api.object(&pod_path).expect("pod")["metadata"]["labels"]["dev.coditect.generation"],
        "2"
    );
    api.take_requests();

    // Stop deletes the pod with the grace asked for; the claim (the home) stays.
    runtime
        .stop(instance, Duration::from_secs(7))
        .await
        .expect("stop");
    let r = api.take_requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].line(), format!("DELETE {pod_path}?"));
    assert_eq!(
        r[0].body.as_ref().expect("delete options")["gracePeriodSeconds"],
        7
    );
    assert!(runtime.inspect(instance).await.expect("inspect").is_none());
    assert!(
        api.object(&claim_path).is_some(),
        "the home survives a stop"
    );
    runtime
        .stop(instance, Duration::from_secs(7))
        .await
        .expect("stopping what is stopped succeeds");
    api.take_requests();

    // Destroy: pod, claim and key; the tenant's namespace and policy stay.
    runtime.destroy(instance).await.expect("destroy");
    assert_eq!(
        lines(&api),
        [
            format!("DELETE {pod_path}?"),
            format!("DELETE {claim_path}?"),
            format!("DELETE {secret_path}?"),
        ]
    );
    let left: Vec<String> = api.objects("/").into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, [format!("/api/v1/namespaces/{ns}"), policy_path]);
    runtime
        .destroy(instance)
        .await
        .expect("destroying what is gone succeeds");
}

#[tokio::test]
async fn tenants_get_their_own_namespaces_and_only_our_scope_is_listed() {
    let Rig { api, runtime, _dir } = rig().await;
    let a = InstanceRef {
        tenant: TenantId::new(),
        workspace: WorkspaceId::new(),
    };
    let b = InstanceRef {
        tenant: TenantId::new(),
        workspace: WorkspaceId::new(),
    };
    runtime.start(&spec(a, 1, "cdk_a")).await.expect("start a");
    runtime.start(&spec(b, 1, "cdk_b")).await.expect("start b");
    let pods: Vec<String> = api
        .objects("/api/v1/namespaces/")
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains("/pods/"))
        .collect();
    assert_eq!(pods.len(), 2);
    assert!(pods[0].contains(&a.tenant.to_string()) != pods[1].contains(&a.tenant.to_string()));
    // A pod of another hub (another scope) in the same cluster is not ours.
    let foreign = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ws-other", "namespace": "x", "labels": {"dev.coditect.scope": "other",
        "dev.coditect.tenant": TenantId::new().to_string(), "dev.coditect.workspace": WorkspaceId::new().to_string()}},
        "spec": {"containers": []}});
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/api/v1/namespaces/x/pods", api.url))
        .json(&foreign)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 201);
    let mut listed: Vec<InstanceRef> = runtime
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.instance)
        .collect();
    listed.sort_by_key(|i| i.workspace.to_string());
    let mut want = vec![a, b];
    want.sort_by_key(|i| i.workspace.to_string());
    assert_eq!(listed, want);
}

#[tokio::test]
async fn an_unreachable_or_failing_api_server_is_transient_and_no_network_is_refused() {
    let Rig { api, runtime, _dir } = rig().await;
    let instance = InstanceRef {
        tenant: TenantId::new(),
        workspace: WorkspaceId::new(),
    };
    api.set_unavailable(true);
    let err = runtime
        .start(&spec(instance, 1, "cdk_k"))
        .await
        .expect_err("503");
    assert!(err.is_transient(), "{err}");
    assert!(runtime.probe().await.is_err());
    api.set_unavailable(false);
    runtime
        .start(&spec(instance, 1, "cdk_k"))
        .await
        .expect("back");

    let mut offline = spec(instance, 2, "cdk_k");
    offline.network = false;
    let err = runtime.start(&offline).await.expect_err("no network");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("needs the network"), "{err}");

    // Nothing listening at all.
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let path = dir.path().join("kubeconfig");
    coditect_testkit::kube_api::write_kubeconfig(&path, &format!("http://127.0.0.1:{port}"));
    let nowhere = KubernetesRuntime::new(config(path));
    let err = nowhere
        .inspect(instance)
        .await
        .expect_err("nothing listens");
    assert!(err.is_transient(), "{err}");
}
