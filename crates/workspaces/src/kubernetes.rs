//! The Kubernetes runtime, through the API server (kube-rs): per workspace a Pod, a
//! PersistentVolumeClaim for its home and a Secret with the agent's key; per tenant a
//! namespace (`<prefix><tenant id>`) whose NetworkPolicy denies all ingress — nothing
//! dials into a workspace; its agent dials out to the hub's Service (`hub_url`).
//!
//! The Pod runs as uid 1000 with every capability dropped, no privilege escalation, the
//! runtime's default seccomp profile, no service-account token (a workspace never holds a
//! credential of the cluster or of the hub, only its own workspace-bound key) and no
//! service links; its CPU and memory requests equal its limits. Its `restartPolicy` is
//! `Never`: a dead agent is the hub's to see and relaunch (as a new generation), so that
//! "running" always means the agent of this launch said ready.
//!
//! Objects that outlive a start (namespace, policy, claim, secret) are written with
//! server-side apply (one idempotent PATCH each); the Pod, which Kubernetes mostly cannot
//! change in place, is created, and replaced when it is of an older generation. Stopping
//! deletes the Pod and keeps the claim; destroying deletes Pod, claim and secret. The
//! tenant's namespace and its policy stay (an empty namespace costs nothing, and deleting
//! one races with the tenant's next workspace).

use crate::{
    HubAddress, InstanceRef, Observed, Phase, Runtime, RuntimeError, RuntimeKind, Scope, Spec,
    agent_env, inside, labels,
};
use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The field manager of every object the hub applies.
pub const FIELD_MANAGER: &str = "coditect-hub";
/// The one container of a workspace's Pod.
pub const CONTAINER: &str = "workspace";

#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    pub scope: Scope,
    /// A kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, else the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
    /// How a Pod's agent reaches the hub (its Service), e.g.
    /// `http://coditect-hub.coditect.svc:8080`.
    pub hub_url: String,
    /// The image when a spec names none.
    pub default_image: String,
    /// Namespaces are `<prefix><tenant id>`.
    pub namespace_prefix: String,
    /// The home's size (a Kubernetes quantity, e.g. `10Gi`).
    pub home_size: String,
    /// The claims' storage class; `None`: the cluster's default.
    pub storage_class: Option<String>,
    /// How long one API call may take.
    pub timeout: Duration,
}

pub struct KubernetesRuntime {
    config: KubernetesConfig,
    /// Made on first use, so a cluster unreachable when the hub starts is picked up later.
    client: OnceCell<kube::Client>,
}

impl KubernetesRuntime {
    pub fn new(config: KubernetesConfig) -> KubernetesRuntime {
        KubernetesRuntime {
            config,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&kube::Client, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let mut config = match &self.config.kubeconfig {
                    Some(path) => {
                        let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                            RuntimeError::Unavailable(format!(
                                "cannot read the kubeconfig {}: {e}",
                                path.display()
                            ))
                        })?;
                        kube::Config::from_custom_kubeconfig(file, &Default::default())
                            .await
                            .map_err(|e| {
                                RuntimeError::Unavailable(format!(
                                    "the kubeconfig {} is not usable: {e}",
                                    path.display()
                                ))
                            })?
                    }
                    None => kube::Config::infer().await.map_err(|e| {
                        RuntimeError::Unavailable(format!(
                            "no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {e}"
                        ))
                    })?,
                };
                // The reconciler retries with its own back-off and bounds every runtime
                // call; kube's default (15 retries, up to 1000 s apart) would hold a step.
                config.default_retry = false;
                config.connect_timeout = Some(self.config.timeout);
                config.read_timeout = Some(self.config.timeout);
                config.write_timeout = Some(self.config.timeout);
                kube::Client::try_from(config).map_err(|e| {
                    RuntimeError::Unavailable(format!("cannot set up the Kubernetes client: {e}"))
                })
            })
            .await
    }

    /// The namespace of a tenant's workspaces.
    pub fn namespace(&self, instance: InstanceRef) -> String {
        format!("{}{}", self.config.namespace_prefix, instance.tenant)
    }

    /// The Pod of a workspace (also the prefix of its other objects).
    pub fn pod_name(instance: InstanceRef) -> String {
        format!("ws-{}", instance.workspace)
    }

    fn claim_name(instance: InstanceRef) -> String {
        format!("ws-{}-home", instance.workspace)
    }

    fn secret_name(instance: InstanceRef) -> String {
        format!("ws-{}-agent", instance.workspace)
    }

    fn labels(&self, instance: InstanceRef, generation: Option<u64>) -> BTreeMap<String, String> {
        crate::object_labels(&self.config.scope, instance, generation)
            .into_iter()
            .collect()
    }

    fn tenant_labels(&self, instance: InstanceRef) -> BTreeMap<String, String> {
        let mut l = self.labels(instance, None);
        l.remove(labels::WORKSPACE);
        l
    }

    fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Namespace and its deny-ingress policy: what every workspace of the tenant shares.
    async fn ensure_tenant(
        &self,
        client: &kube::Client,
        instance: InstanceRef,
    ) -> Result<String, RuntimeError> {
        let ns = self.namespace(instance);
        let namespace = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": ns, "labels": self.tenant_labels(instance) },
        });
        Api::<Namespace>::all(client.clone())
            .patch(&ns, &Self::apply_params(), &Patch::Apply(&namespace))
            .await
            .map_err(|e| error(e, "apply the tenant namespace"))?;
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": "deny-ingress", "namespace": ns, "labels": self.tenant_labels(instance) },
            // Every Pod of the namespace, no ingress rule: nothing reaches a workspace
            // (its agent dials out), not even another workspace of the tenant.
            "spec": { "podSelector": {}, "policyTypes": ["Ingress"] },
        });
        Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
            .patch(
                "deny-ingress",
                &Self::apply_params(),
                &Patch::Apply(&policy),
            )
            .await
            .map_err(|e| error(e, "apply the namespace's network policy"))?;
        Ok(ns)
    }

    async fn ensure_home(
        &self,
        client: &kube::Client,
        ns: &str,
        instance: InstanceRef,
    ) -> Result<(), RuntimeError> {
        let name = Self::claim_name(instance);
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": self.config.home_size } },
        });
        if let Some(class) = &self.config.storage_class {
            spec["storageClassName"] = json!(class);
        }
        let claim = json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": { "name": name, "namespace": ns, "labels": self.labels(instance, None) },
            "spec": spec,
        });
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .patch(&name, &Self::apply_params(), &Patch::Apply(&claim))
            .await
            .map_err(|e| error(e, "apply the home's volume claim"))?;
        Ok(())
    }

    async fn write_key(
        &self,
        client: &kube::Client,
        instance: InstanceRef,
        key: &coditect_proto::Secret,
    ) -> Result<(), RuntimeError> {
        let ns = self.namespace(instance);
        let name = Self::secret_name(instance);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(self.labels(instance, None)),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "agent-key".to_string(),
                ByteString(key.expose().as_bytes().to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), &ns)
            .patch(&name, &Self::apply_params(), &Patch::Apply(&secret))
            .await
            .map_err(|e| error(e, "apply the agent's key"))?;
        Ok(())
    }

    /// The Pod of one launch.
    pub fn pod(&self, spec: &Spec) -> Result<Pod, RuntimeError> {
        let instance = spec.instance;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| self.config.default_image.clone());
        let env: Vec<_> = agent_env(
            spec,
            HubAddress::Url(&self.config.hub_url),
            inside::KEY_FILE,
            inside::HOME,
        )
        .into_iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect();
        let r = &spec.resources;
        let mut limits = serde_json::Map::new();
        if let Some(m) = r.cpu_millis {
            limits.insert("cpu".into(), json!(format!("{m}m")));
        }
        if let Some(mb) = r.memory_mb {
            limits.insert("memory".into(), json!(format!("{mb}Mi")));
        }
        let short = instance.workspace.to_string();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": Self::pod_name(instance),
                "namespace": self.namespace(instance),
                "labels": self.labels(instance, Some(spec.generation)),
            },
            "spec": {
                "restartPolicy": "Never",
                "hostname": format!("ws-{}", &short[short.len().saturating_sub(8)..]),
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": {
                    "runAsUser": inside::UID,
                    "runAsGroup": inside::UID,
                    "fsGroup": inside::UID,
                    "runAsNonRoot": true,
                    "seccompProfile": { "type": "RuntimeDefault" },
                },
                "containers": [{
                    "name": CONTAINER,
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["codi-monitor", "agent"],
                    "workingDir": inside::HOME,
                    "env": env,
                    "resources": { "requests": limits.clone(), "limits": limits },
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "privileged": false,
                        "capabilities": { "drop": ["ALL"] },
                    },
                    "volumeMounts": [
                        { "name": "home", "mountPath": inside::HOME },
                        { "name": "agent-key", "mountPath": inside::SECRETS_DIR, "readOnly": true },
                    ],
                }],
                "volumes": [
                    { "name": "home", "persistentVolumeClaim": { "claimName": Self::claim_name(instance) } },
                    // A whole-secret volume (no subPath): the kubelet refreshes it when a
                    // pool claim rotates the key, and the agent reads it per request.
                    { "name": "agent-key", "secret": { "secretName": Self::secret_name(instance), "defaultMode": 0o444 } },
                ],
            },
        });
        serde_json::from_value(pod)
            .map_err(|e| RuntimeError::Invalid(format!("cannot make the pod: {e}")))
    }

    async fn get_pod(
        &self,
        client: &kube::Client,
        instance: InstanceRef,
    ) -> Result<Option<Observed>, RuntimeError> {
        let pods = Api::<Pod>::namespaced(client.clone(), &self.namespace(instance));
        let found = pods
            .get_opt(&Self::pod_name(instance))
            .await
            .map_err(|e| error(e, "read the pod"))?;
        Ok(found.and_then(|p| observe(&p)))
    }

    async fn delete_pod(
        &self,
        client: &kube::Client,
        instance: InstanceRef,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let pods = Api::<Pod>::namespaced(client.clone(), &self.namespace(instance));
        let params = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        gone(
            pods.delete(&Self::pod_name(instance), &params).await,
            "delete the pod",
        )
    }
}

/// What a Pod of ours says about its workspace (`None`: not one of ours).
fn observe(pod: &Pod) -> Option<Observed> {
    let labels = pod.metadata.labels.as_ref()?;
    let instance = InstanceRef {
        tenant: labels.get(labels::TENANT)?.parse().ok()?,
        workspace: labels.get(labels::WORKSPACE)?.parse().ok()?,
    };
    let generation = labels
        .get(labels::GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == CONTAINER))
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    let exited = || Phase::Exited {
        code: terminated.map(|t| i64::from(t.exit_code)),
        oom: terminated.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled")),
    };
    let phase = if pod.metadata.deletion_timestamp.is_some() {
        // Being deleted: whatever it still does, this launch is over.
        exited()
    } else {
        match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded" | "Failed") => exited(),
            Some("Running") if terminated.is_some() => exited(),
            Some("Running" | "Unknown") => Phase::Running,
            // Pending: scheduled or pulling; nothing ran yet.
            _ => Phase::Created,
        }
    };
    Some(Observed {
        instance,
        generation,
        phase,
        runtime_id: pod.metadata.uid.clone().unwrap_or_default(),
    })
}

/// A delete's answer: gone already is gone.
fn gone<T>(r: Result<T, kube::Error>, what: &str) -> Result<(), RuntimeError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some(404) => Ok(()),
        Err(e) => Err(error(e, what)),
    }
}

fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// An API server's refusal is the answer (not transient); anything else — no connection,
/// a timeout, a 5xx — may pass.
fn error(e: kube::Error, what: &str) -> RuntimeError {
    match &e {
        kube::Error::Api(s) if s.code < 500 && s.code != 429 => {
            RuntimeError::Failed(format!("cannot {what}: {} ({})", s.message, s.code))
        }
        kube::Error::Api(s) => RuntimeError::Unavailable(format!(
            "cannot {what}: the API server says {} ({})",
            s.message, s.code
        )),
        _ => RuntimeError::Unavailable(format!(
            "cannot {what}: the Kubernetes API server does not answer: {e}"
        )),
    }
}

#[async_trait]
impl Runtime for KubernetesRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Kubernetes
    }

    async fn create(&self, spec: &Spec) -> Result<(), RuntimeError> {
        if !spec.network {
            // The agent reaches the hub over the cluster network; there is no socket to share.
            return Err(RuntimeError::Invalid(
                "the kubernetes runtime needs the network (the agent reaches the hub's Service over it): set network: true".into(),
            ));
        }
        let client = self.client().await?;
        let pod = self.pod(spec)?;
        let ns = self.ensure_tenant(client, spec.instance).await?;
        self.ensure_home(client, &ns, spec.instance).await?;
        self.write_key(client, spec.instance, &spec.agent.key)
            .await?;
        match self.get_pod(client, spec.instance).await? {
            Some(o) if o.generation == spec.generation => return Ok(()),
            Some(_) => {
                // An older launch: it goes first (its key is already replaced).
                self.delete_pod(client, spec.instance, Duration::ZERO)
                    .await?;
            }
            None => {}
        }
        let pods = Api::<Pod>::namespaced(client.clone(), &ns);
        match pods.create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(()),
            // The older Pod is still terminating: the reconciler comes back.
            Err(e) if code(&e) == Some(409) => Err(RuntimeError::Unavailable(format!(
                "the pod {} of an earlier start is still terminating",
                Self::pod_name(spec.instance)
            ))),
            Err(e) => Err(error(e, "create the pod")),
        }
    }

    async fn start(&self, spec: &Spec) -> Result<Observed, RuntimeError> {
        let client = self.client().await?;
        if let Some(o) = self.get_pod(client, spec.instance).await?
            && o.generation == spec.generation
            && !matches!(o.phase, Phase::Exited { .. })
        {
            return Ok(o);
        }
        self.create(spec).await?;
        self.get_pod(client, spec.instance)
            .await?
            .ok_or_else(|| RuntimeError::Failed("the pod vanished as it was created".into()))
    }

    async fn stop(&self, instance: InstanceRef, grace: Duration) -> Result<(), RuntimeError> {
        let client = self.client().await?;
        self.delete_pod(client, instance, grace).await
    }

    async fn rekey(
        &self,
        instance: InstanceRef,
        key: &coditect_proto::Secret,
    ) -> Result<(), RuntimeError> {
        let client = self.client().await?;
        self.write_key(client, instance, key).await
    }

    async fn seed_home(
        &self,
        _instance: InstanceRef,
        _from: &std::path::Path,
    ) -> Result<(), RuntimeError> {
        // The claim is on the cluster's storage, out of the hub's reach; an init
        // container would need the credential inside the Pod.
        Err(RuntimeError::Invalid(
            "workspaces from a repository are not supported on the kubernetes runtime yet".into(),
        ))
    }

    async fn destroy(&self, instance: InstanceRef) -> Result<(), RuntimeError> {
        let client = self.client().await?;
        self.delete_pod(client, instance, Duration::ZERO).await?;
        let ns = self.namespace(instance);
        gone(
            Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                .delete(&Self::claim_name(instance), &DeleteParams::default())
                .await,
            "delete the home's volume claim",
        )?;
        gone(
            Api::<Secret>::namespaced(client.clone(), &ns)
                .delete(&Self::secret_name(instance), &DeleteParams::default())
                .await,
            "delete the agent's key",
        )
    }

    async fn inspect(&self, instance: InstanceRef) -> Result<Option<Observed>, RuntimeError> {
        let client = self.client().await?;
        self.get_pod(client, instance).await
    }

    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        let client = self.client().await?;
        let selector = format!("{}={}", labels::SCOPE, self.config.scope.as_str());
        let pods = Api::<Pod>::all(client.clone())
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| error(e, "list the pods"))?;
        Ok(pods.items.iter().filter_map(observe).collect())
    }

    async fn probe(&self) -> Result<(), RuntimeError> {
        let client = self.client().await?;
        client
            .apiserver_version()
            .await
            .map(|_| ())
            .map_err(|e| error(e, "reach the API server"))
    }

    fn limits(&self) -> String {
        "kubernetes (cpu and memory requests = limits; pids by the kubelet's pod pids limit)".into()
    }
}
