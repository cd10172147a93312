//! `ferry acl`: manage the ACL file the broker reads with `--acls` (by
//! default `DATA_DIR/acls.toml`), as `ferry user` manages the credentials
//! file. The broker rereads it on SIGHUP; Kafka's CreateAcls and
//! DeleteAcls change the same file through a running broker.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_broker::auth::acl::{
    Acl, AclFilter, Authorizer, CLUSTER_NAME, Operation, PatternFilter, PatternType, Permission,
    ResourceType, WILDCARD, principal_of,
};

use super::CliError;

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add rules: one per --operation, for the principal and the resource
    /// given. Prints each rule added as a JSON line.
    Add {
        /// The principal: NAME, User:NAME, or * for every principal.
        #[arg(long)]
        principal: String,
        #[command(flatten)]
        resource: Resource,
        /// An operation: all, read, write, create, delete, alter,
        /// describe, cluster-action, describe-configs, alter-configs or
        /// idempotent-write; repeatable.
        #[arg(long = "operation", required = true)]
        operations: Vec<Operation>,
        /// Match every name that starts with the resource's name.
        #[arg(long)]
        prefixed: bool,
        /// A deny rule, which wins over every allow rule.
        #[arg(long)]
        deny: bool,
        /// The client address the rule is for.
        #[arg(long, default_value = WILDCARD)]
        host: String,
        #[command(flatten)]
        file: AclFile,
    },
    /// Remove the rules that match every selector given (`--all` for
    /// every rule). Prints each rule removed as a JSON line.
    Remove {
        #[command(flatten)]
        select: Select,
        /// Remove every rule (refused without it when nothing is selected).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        file: AclFile,
    },
    /// Print the rules that match every selector given (all without
    /// one), one JSON line each.
    List {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        file: AclFile,
    },
}

/// The resource a rule is about: exactly one of these.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Resource {
    /// A topic (or * for every topic).
    #[arg(long)]
    topic: Option<String>,
    /// A consumer group (or *).
    #[arg(long)]
    group: Option<String>,
    /// A transactional id (or *).
    #[arg(long)]
    transactional_id: Option<String>,
    /// The cluster: aborting others' transactions, deleting topics,
    /// idempotent writes, ACLs.
    #[arg(long)]
    cluster: bool,
}

impl Resource {
    fn kind_and_name(&self) -> Option<(ResourceType, String)> {
        match (
            &self.topic,
            &self.group,
            &self.transactional_id,
            self.cluster,
        ) {
            (Some(t), ..) => Some((ResourceType::Topic, t.clone())),
            (_, Some(g), ..) => Some((ResourceType::Group, g.clone())),
            (_, _, Some(id), _) => Some((ResourceType::TransactionalId, id.clone())),
            (.., true) => Some((ResourceType::Cluster, CLUSTER_NAME.to_string())),
            _ => None,
        }
    }
}

/// Selectors of `remove` and `list`; each one given must match.
#[derive(Debug, clap::Args)]
pub struct Select {
    /// The principal, as `add` takes it.
    #[arg(long)]
    principal: Option<String>,
    /// Rules for this topic name (as written in the rule).
    #[arg(long, conflicts_with_all = ["group", "transactional_id", "cluster"])]
    topic: Option<String>,
    #[arg(long, conflicts_with_all = ["transactional_id", "cluster"])]
    group: Option<String>,
    #[arg(long, conflicts_with = "cluster")]
    transactional_id: Option<String>,
    #[arg(long)]
    cluster: bool,
    #[arg(long)]
    operation: Option<Operation>,
}

impl Select {
    fn filter(&self) -> AclFilter {
        let resource = Resource {
            topic: self.topic.clone(),
            group: self.group.clone(),
            transactional_id: self.transactional_id.clone(),
            cluster: self.cluster,
        };
        let (kind, name) = resource.kind_and_name().unzip();
        AclFilter {
            resource: kind,
            name,
            pattern: PatternFilter::Any,
            principal: self.principal.as_deref().map(principal_of),
            operation: self.operation,
            ..AclFilter::any()
        }
    }

    fn is_empty(&self) -> bool {
        self.filter() == AclFilter::any()
    }
}

#[derive(Debug, clap::Args)]
pub struct AclFile {
    /// The ACL file (TOML); `add` creates it, mode 0600.
    #[arg(long, env = "FERRY_ACLS")]
    acls: PathBuf,
}

fn print(acls: &[Acl]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for a in acls {
        writeln!(out, "{}", serde_json::to_string(a)?)?;
    }
    Ok(())
}

fn open(file: &AclFile) -> Result<Authorizer, CliError> {
    Ok(Authorizer::open(&file.acls, &[])?)
}

const APPLY: &str = "a running broker applies the change on SIGHUP";

pub fn run(command: AclCommand) -> Result<ExitCode, CliError> {
    match command {
        AclCommand::Add {
            principal,
            resource,
            operations,
            prefixed,
            deny,
            host,
            file,
        } => {
            let (kind, name) = resource
                .kind_and_name()
                .expect("clap requires one resource");
            let acls: Vec<Acl> = operations
                .into_iter()
                .map(|operation| Acl {
                    principal: principal_of(&principal),
                    host: host.clone(),
                    resource: kind,
                    name: name.clone(),
                    pattern: if prefixed {
                        PatternType::Prefixed
                    } else {
                        PatternType::Literal
                    },
                    operation,
                    permission: if deny {
                        Permission::Deny
                    } else {
                        Permission::Allow
                    },
                })
                .collect();
            // Checked before anything is written: a bad rule changes nothing.
            for a in &acls {
                a.check()?;
            }
            let authorizer = open(&file)?;
            for r in authorizer.create(acls.clone())? {
                r?;
            }
            print(&acls)?;
            eprintln!("{APPLY}");
            Ok(ExitCode::SUCCESS)
        }
        AclCommand::Remove { select, all, file } => {
            if select.is_empty() && !all {
                return Err(
                    "nothing selected: give --principal, a resource or --operation, or --all"
                        .into(),
                );
            }
            let authorizer = open(&file)?;
            let removed = authorizer.delete(&[select.filter()])?;
            print(&removed[0])?;
            eprintln!("removed {} rule(s); {APPLY}", removed[0].len());
            Ok(ExitCode::SUCCESS)
        }
        AclCommand::List { select, file } => {
            let authorizer = open(&file)?;
            let filter = select.filter();
            let selected: Vec<Acl> = authorizer
                .current()
                .iter()
                .filter(|a| filter.matches(a))
                .cloned()
                .collect();
            print(&selected)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
