//! `cellbox template`: make, build, list and delete custom templates
//! (E2B's `e2b template init | build | list | delete`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::Progress;
use crate::template::{self, BuildOptions, SandboxDefaults, TemplateStore};

use super::e2b_toml::{self, E2bToml};

use super::{EXIT_OK, EXIT_SANDBOX_ERROR};

#[derive(Debug, Args)]
pub struct TemplateArgs {
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Write a starter e2b.Dockerfile in the folder (the current one by default).
    Init {
        #[arg(long, value_name = "DIR", default_value = ".")]
        path: PathBuf,
    },
    /// Build a template from an e2b.Dockerfile (cached by content; network during the build
    /// only). Options not given come from the folder's e2b.toml (E2B's), which the build writes.
    Build {
        /// The template's name (`cellbox run --template NAME`, E2B's templateID).
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// The build context: the folder COPY reads from and the Dockerfile is in.
        #[arg(long, value_name = "DIR", default_value = ".")]
        path: PathBuf,
        /// The Dockerfile (default: e2b.Dockerfile in the context folder).
        #[arg(long, short = 'd', value_name = "FILE")]
        dockerfile: Option<PathBuf>,
        /// A value for one of the Dockerfile's ARGs; repeat for more.
        #[arg(long, value_name = "NAME=VALUE")]
        build_arg: Vec<String>,
        /// A command started in the background in each new sandbox (E2B's start command).
        #[arg(long, short = 'c', value_name = "COMMAND")]
        cmd: Option<String>,
        /// A command run until it succeeds before a new sandbox is handed over.
        #[arg(long, value_name = "COMMAND")]
        ready_cmd: Option<String>,
        /// vCPUs of each sandbox.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
        cpu_count: Option<u8>,
        /// Memory of each sandbox, in MiB.
        #[arg(long, value_parser = clap::value_parser!(u32).range(128..=65536))]
        memory_mb: Option<u32>,
    },
    /// List the built templates.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a template (and the layers nothing else uses).
    Delete { name: String },
}

pub async fn run(args: TemplateArgs) -> u8 {
    match execute(args.command).await {
        Ok(()) => EXIT_OK,
        Err(message) => {
            eprintln!("cellbox: error: {message}");
            EXIT_SANDBOX_ERROR
        }
    }
}

async fn execute(command: TemplateCommand) -> Result<(), String> {
    let store = TemplateStore::open(&crate::default_cache_dir());
    let mut out = std::io::stdout().lock();
    match command {
        TemplateCommand::Init { path } => {
            let file = path.join("e2b.Dockerfile");
            if file.exists() {
                return Err(format!("{} exists already", file.display()));
            }
            std::fs::create_dir_all(&path)
                .and_then(|()| std::fs::write(&file, template::STARTER_DOCKERFILE))
                .map_err(|e| format!("writing {}: {e}", file.display()))?;
            let _ = writeln!(
                out,
                "wrote {}; build it with `cellbox template build --name NAME --path {}`",
                file.display(),
                path.display()
            );
        }
        TemplateCommand::Build {
            name,
            path,
            dockerfile,
            build_arg,
            cmd,
            ready_cmd,
            cpu_count,
            memory_mb,
        } => {
            let mut config = E2bToml::read(&path)?;
            let name = name
                .or_else(|| config.template_name.clone())
                .or_else(|| config.template_id.clone())
                .ok_or(format!(
                    "name the template: --name NAME (or template_name in {})",
                    path.join(e2b_toml::FILE).display()
                ))?;
            let dockerfile = dockerfile
                .or_else(|| config.dockerfile.as_ref().map(|d| path.join(d)))
                .unwrap_or_else(|| path.join("e2b.Dockerfile"));
            let defaults = SandboxDefaults {
                start_cmd: cmd.or_else(|| config.start_cmd.clone()),
                ready_cmd: ready_cmd.or_else(|| config.ready_cmd.clone()),
                cpu_count: cpu_count.or(config.cpu_count),
                memory_mb: memory_mb.or(config.memory_mb),
            };
            let mut build_args = BTreeMap::new();
            for pair in build_arg {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or(format!("--build-arg {pair}: not NAME=VALUE"))?;
                build_args.insert(key.to_string(), value.to_string());
            }
            let mut options = BuildOptions::new(name, &dockerfile);
            options.context = Some(path.clone());
            options.build_args = build_args;
            options.defaults = defaults.clone();
            options.progress = Progress::new(|line| eprintln!("cellbox: {line}"));
            let info = template::build(options).await.map_err(|e| e.to_string())?;
            config.template_id = Some(info.name.clone());
            config.template_name = Some(info.name.clone());
            config.dockerfile = Some(match dockerfile.strip_prefix(&path) {
                Ok(inside) => inside.display().to_string(),
                Err(_) => dockerfile.display().to_string(),
            });
            config.start_cmd = defaults.start_cmd;
            config.ready_cmd = defaults.ready_cmd;
            config.cpu_count = defaults.cpu_count;
            config.memory_mb = defaults.memory_mb;
            config.write(&path)?;
            let _ = writeln!(
                out,
                "template {} built; use it with `cellbox run --template {}` or Sandbox.create(\"{}\")",
                info.name, info.name, info.name
            );
        }
        TemplateCommand::List { json } => {
            let templates = store.list().map_err(|e| e.to_string())?;
            if json {
                let text = serde_json::to_string_pretty(&templates).map_err(|e| e.to_string())?;
                let _ = writeln!(out, "{text}");
            } else if templates.is_empty() {
                let _ = writeln!(
                    out,
                    "no templates yet (make one with `cellbox template init`)"
                );
            } else {
                let _ = writeln!(out, "{:<24} {:<24} {:>10}  LAYERS", "NAME", "BASE", "SIZE");
                for t in templates {
                    let _ = writeln!(
                        out,
                        "{:<24} {:<24} {:>8.1}MB  {}",
                        t.name,
                        t.base.as_deref().unwrap_or("(default)"),
                        t.size as f64 / 1e6,
                        t.layers.len()
                    );
                }
            }
        }
        TemplateCommand::Delete { name } => {
            if !store.delete(&name).map_err(|e| e.to_string())? {
                return Err(format!("no template named `{name}`"));
            }
            let _ = writeln!(out, "deleted template {name}");
        }
    }
    Ok(())
}
