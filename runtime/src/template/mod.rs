//! Custom templates, E2B's way: an `e2b.Dockerfile` (`FROM` the default
//! template; `RUN`, `COPY`, `ENV`, `WORKDIR`, `USER`, `ARG`) built into a
//! layer over the guest's root file system, which sandboxes made from the
//! template see under their own writable layer.
//!
//! - [`dockerfile`]: the Dockerfile subset and its parser
//! - [`build`]: running the steps in a namespace sandbox with network; the layer
//! - [`store`]: built templates and their layers in the artefact cache

pub mod build;
pub mod dockerfile;
pub mod store;

pub use build::{BuildOptions, build};
pub use store::{READY_WITHIN, SandboxDefaults, Template, TemplateInfo, TemplateStore};

/// The `e2b.Dockerfile` that `cellbox template init` writes.
pub const STARTER_DOCKERFILE: &str = "\
# A cellbox template (E2B's e2b.Dockerfile): built with `cellbox template build --name NAME`,
# used with `cellbox run --template NAME` or E2B's `Sandbox.create(\"NAME\")`.
# Supported: FROM (this line, or another cellbox template), ARG, ENV, WORKDIR, USER, RUN, COPY.
FROM e2bdev/code-interpreter:latest

# RUN steps run as root with network access (the build's only).
# RUN pip install cowsay
";
