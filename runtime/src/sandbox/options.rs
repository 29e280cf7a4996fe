//! How a [`super::Sandbox`] is created and how one run of code behaves.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::guest::{ContextInfo, Language};
use crate::namespace::{NamespaceConfig, NamespacePool, NetworkPolicy};
use crate::progress::Progress;
use crate::router::{HeavyChoice, Policy};
use std::sync::Arc;

/// Which backends a sandbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendPolicy {
    /// The WebAssembly fast path, moving to the heavy backend (microVM where
    /// KVM can run Linux, else the namespace sandbox) when needed.
    #[default]
    Auto,
    /// The fast path only (no files, commands or extra contexts).
    Wasm,
    /// The microVM for everything.
    Vm,
    /// The namespace sandbox for everything.
    Namespace,
}

impl BackendPolicy {
    /// Where cells of a sandbox with `network` (and a template or volumes,
    /// if `namespace_only`) may run: everywhere without them; with network,
    /// on a heavy backend only (the fast path has none); with a template or
    /// volumes, on the namespace backend only (the microVM does not stack
    /// template layers or mount volumes yet).
    pub(crate) fn split_for(
        self,
        network: &NetworkPolicy,
        namespace_only: bool,
    ) -> crate::Result<(Policy, HeavyChoice)> {
        network.check()?;
        // Host-name rules live in the namespace sandbox's egress proxy.
        let namespace_only = namespace_only || (network.enabled() && network.by_host_name());
        let refuse = |what: &str| Err(crate::Error::InvalidArgument(what.into()));
        match (self, namespace_only) {
            _ if !network.enabled() && !namespace_only => Ok(self.split()),
            (BackendPolicy::Wasm, false) => refuse(
                "network access needs a heavy backend (microVM or namespace); \
                 the WebAssembly fast path has no network",
            ),
            (BackendPolicy::Wasm | BackendPolicy::Vm, true) => refuse(
                "custom templates, volumes and per-host network rules (`rules`, `*.` \
                 wildcards) need the namespace backend; the microVM and the fast path run \
                 the default template only, without volumes, and filter by address only",
            ),
            (BackendPolicy::Auto, false) => Ok((Policy::HeavyOnly, HeavyChoice::Auto)),
            (BackendPolicy::Vm, false) => Ok((Policy::HeavyOnly, HeavyChoice::Vm)),
            (BackendPolicy::Auto | BackendPolicy::Namespace, _) => {
                Ok((Policy::HeavyOnly, HeavyChoice::Namespace))
            }
        }
    }

    fn split(self) -> (Policy, HeavyChoice) {
        match self {
            BackendPolicy::Auto => (Policy::Auto, HeavyChoice::Auto),
            BackendPolicy::Wasm => (Policy::FastOnly, HeavyChoice::Auto),
            BackendPolicy::Vm => (Policy::HeavyOnly, HeavyChoice::Vm),
            BackendPolicy::Namespace => (Policy::HeavyOnly, HeavyChoice::Namespace),
        }
    }
}

/// Options of a new sandbox; build them with the `with_*` methods.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Which backends it may use.
    pub backend: BackendPolicy,
    /// vCPUs of the microVM.
    pub vcpus: u8,
    /// Memory for everything in the heavy backend, in MiB.
    pub memory_mib: u32,
    /// What the sandbox may write, in MiB: the namespace sandbox's writable
    /// layer and the WebAssembly session's scratch folder (the microVM's is
    /// its root image's free space). Past it, writes fail with `ENOSPC`.
    pub disk_mib: u32,
    /// Timeout of a run that sets none.
    pub timeout: Duration,
    /// Environment variables of every run and command.
    pub env_vars: BTreeMap<String, String>,
    /// Free-form labels, kept with the sandbox.
    pub metadata: BTreeMap<String, String>,
    /// Working folder of the default context and of commands (`/home/user`).
    pub cwd: Option<String>,
    /// Close the sandbox after this long without use (`None`: never).
    pub inactivity_timeout: Option<Duration>,
    /// Start the heavy backend in the background at once (auto policy).
    pub prestart: bool,
    /// What the sandbox may reach on the network (default: nothing). A
    /// sandbox with network runs every cell on the namespace backend.
    pub network: NetworkPolicy,
    /// The template it is made from (`cellbox template build`; default:
    /// cellbox's own). A template's sandbox runs every cell on the
    /// namespace backend; its `ENV` and `WORKDIR` are the sandbox's
    /// defaults.
    pub template: Option<String>,
    /// Host folders shown in the sandbox (`cellbox serve`'s volumes); a
    /// sandbox with them runs every cell on the namespace backend.
    pub volumes: Vec<crate::VolumeMount>,
    /// Spare namespace sandboxes to take the heavy backend from, when they
    /// match these options (`cellbox serve` keeps one; see [`NamespacePool`]).
    pub namespace_pool: Option<Arc<NamespacePool>>,
    /// Progress of first-use artefact builds.
    pub progress: Progress,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            backend: BackendPolicy::Auto,
            vcpus: 1,
            memory_mib: 2048,
            disk_mib: 4096,
            timeout: Duration::from_secs(60),
            env_vars: BTreeMap::new(),
            metadata: BTreeMap::new(),
            cwd: None,
            inactivity_timeout: Some(Duration::from_secs(300)),
            prestart: true,
            network: NetworkPolicy::default(),
            template: None,
            volumes: Vec::new(),
            namespace_pool: None,
            progress: Progress::default(),
        }
    }
}

impl SandboxOptions {
    /// Takes the heavy backend from `pool`'s spares where they match.
    pub fn with_namespace_pool(mut self, pool: Arc<NamespacePool>) -> Self {
        self.namespace_pool = Some(pool);
        self
    }

    /// The namespace sandbox these options ask for, on a template's `layers`.
    pub fn namespace_config(&self, layers: Vec<std::path::PathBuf>) -> NamespaceConfig {
        NamespaceConfig {
            memory_limit: u64::from(self.memory_mib) << 20,
            disk_limit: u64::from(self.disk_mib) << 20,
            default_timeout: self.timeout,
            network: self.network.clone(),
            template_layers: layers,
            volumes: self.volumes.clone(),
            ..Default::default()
        }
    }

    /// Whether only the namespace backend can run these options: a custom
    /// template or volumes.
    pub(crate) fn namespace_only(&self) -> bool {
        self.template.is_some() || !self.volumes.is_empty()
    }

    /// Whether these options' heavy backend is the namespace sandbox here
    /// (and can start: as root, or as a user set up for it), so that a
    /// [`NamespacePool`] of [`SandboxOptions::namespace_config`] can serve them.
    pub fn heavy_is_namespace(&self) -> bool {
        let split = self.backend.split_for(&self.network, self.namespace_only());
        let startable =
            crate::namespace::rootless::can_start(NamespaceConfig::default().allow_unlimited);
        startable
            && matches!(split, Ok((policy, heavy))
            if policy != Policy::FastOnly && heavy.resolve() == crate::Backend::Namespace)
    }

    /// Sets the backend policy.
    pub fn with_backend(mut self, backend: BackendPolicy) -> Self {
        self.backend = backend;
        self
    }
    /// Sets the microVM's vCPUs.
    pub fn with_vcpus(mut self, vcpus: u8) -> Self {
        self.vcpus = vcpus;
        self
    }
    /// Sets the heavy backend's memory in MiB.
    pub fn with_memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    /// Sets the namespace sandbox's disk size in MiB.
    pub fn with_disk_mib(mut self, mib: u32) -> Self {
        self.disk_mib = mib;
        self
    }
    /// Sets the default run timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// Adds an environment variable for every run and command.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env_vars.insert(key.into(), value.into());
        self
    }
    /// Adds a metadata label.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Sets the working folder.
    pub fn with_cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }
    /// Sets (or with `None` removes) the inactivity timeout.
    pub fn with_inactivity_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.inactivity_timeout = timeout;
        self
    }
    /// Sets what the sandbox may reach on the network.
    pub fn with_network(mut self, network: NetworkPolicy) -> Self {
        self.network = network;
        self
    }
    /// Makes the sandbox from the template `name`.
    pub fn with_template(mut self, name: impl Into<String>) -> Self {
        self.template = Some(name.into());
        self
    }
    /// Whether to start the heavy backend at once.
    pub fn with_prestart(mut self, prestart: bool) -> Self {
        self.prestart = prestart;
        self
    }
}

/// Options of one run of code.
#[derive(Debug, Clone, Default)]
pub struct RunCodeOptions {
    /// Run in this context instead of the default one.
    pub context: Option<ContextInfo>,
    /// Run in this language's default context (without `context`), or
    /// check that `context` runs it. Default: Python.
    pub language: Option<Language>,
    /// Environment variables for this run only (over the sandbox's).
    pub env: BTreeMap<String, String>,
    /// Timeout of this run (the kernel is interrupted and keeps its state).
    pub timeout: Option<Duration>,
    /// Interrupts the run from another task.
    pub interrupt: Option<crate::executor::Interrupt>,
}

impl RunCodeOptions {
    /// Runs in `context`.
    pub fn in_context(mut self, context: &ContextInfo) -> Self {
        self.context = Some(context.clone());
        self
    }
    /// Sets a variable for this run.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    /// Sets this run's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    /// Runs in `language` (its default context unless one is given).
    pub fn language(mut self, language: Language) -> Self {
        self.language = Some(language);
        self
    }

    /// The id of the context this run goes to.
    pub(crate) fn context_id(&self) -> crate::Result<&str> {
        match (&self.context, self.language) {
            (Some(context), Some(language)) if context.language != language => {
                Err(crate::Error::InvalidArgument(format!(
                    "the context `{}` runs {}, not {language}",
                    context.id, context.language
                )))
            }
            (Some(context), _) => Ok(&context.id),
            (None, language) => Ok(language.unwrap_or_default().default_context()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_templates_choose_where_cells_run() {
        let online = NetworkPolicy::internet();
        let offline = NetworkPolicy::default();
        let split = |backend: BackendPolicy, network: &NetworkPolicy, template| {
            backend.split_for(network, template)
        };
        // Neither: the backend's own split.
        assert_eq!(
            split(BackendPolicy::Auto, &offline, false).unwrap(),
            (Policy::Auto, HeavyChoice::Auto)
        );
        // Network: a heavy backend, the microVM included.
        assert_eq!(
            split(BackendPolicy::Auto, &online, false).unwrap(),
            (Policy::HeavyOnly, HeavyChoice::Auto)
        );
        assert_eq!(
            split(BackendPolicy::Vm, &online, false).unwrap(),
            (Policy::HeavyOnly, HeavyChoice::Vm)
        );
        assert_eq!(
            split(BackendPolicy::Namespace, &online, false).unwrap(),
            (Policy::HeavyOnly, HeavyChoice::Namespace)
        );
        let wasm = split(BackendPolicy::Wasm, &online, false).unwrap_err();
        assert!(
            wasm.to_string().contains("fast path has no network"),
            "{wasm}"
        );
        // A template: the namespace backend only.
        assert_eq!(
            split(BackendPolicy::Auto, &online, true).unwrap(),
            (Policy::HeavyOnly, HeavyChoice::Namespace)
        );
        let vm = split(BackendPolicy::Vm, &offline, true).unwrap_err();
        assert!(vm.to_string().contains("namespace backend"), "{vm}");
        // Bad rules are refused before anything starts.
        let bad = NetworkPolicy {
            deny_out: vec!["example.com".into()],
            ..Default::default()
        };
        assert!(split(BackendPolicy::Namespace, &bad, false).is_err());
        // Rules by host name: the namespace backend's proxy only.
        let by_name = NetworkPolicy {
            allow_out: vec!["*.example.com".into()],
            ..Default::default()
        };
        assert_eq!(
            split(BackendPolicy::Auto, &by_name, false).unwrap(),
            (Policy::HeavyOnly, HeavyChoice::Namespace)
        );
        let vm = split(BackendPolicy::Vm, &by_name, false).unwrap_err();
        assert!(vm.to_string().contains("wildcards"), "{vm}");
    }
}
