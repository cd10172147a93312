//! Authorization: what a principal may do.
//!
//! An ACL allows (or denies) one principal, from one host or any, one
//! operation on the resources one pattern names: a topic, a consumer
//! group, a transactional id, or the cluster; by literal name, by prefix,
//! or `*` for every resource of the kind. Once the broker authenticates
//! its clients (a credentials file, or mutual TLS), every request passes
//! [`Authorizer::authorize`], and anything no ACL allows is denied: a
//! super user is allowed everything, a deny beats any allow, and an
//! unauthenticated caller is allowed nothing. Without authentication the
//! authorizer is off and allows everything (the loopback developer's
//! broker).
//!
//! Which operation on which resource each request needs is the front
//! ends' table (`service` for gRPC, `kafka` for Kafka, documented in
//! `docs/security.md`); the decision is made here alone.
//!
//! Operations imply others as Kafka's do: read, write, delete or alter
//! on a resource allow describing it, alter-configs allows
//! describe-configs, and `all` allows everything. Implications apply to
//! allow rules only: denying read does not deny describe.
//!
//! The ACLs live in their own file (`acl_file`, by default `acls.toml` in
//! the data dir), read at start and on [`Authorizer::reload`] (SIGHUP for
//! `ferry broker`), and rewritten atomically by [`Authorizer::create`] and
//! [`Authorizer::delete`], which Kafka's CreateAcls and DeleteAcls call.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Principal;

/// Most ACLs the broker holds.
pub const MAX_ACLS: usize = 10_000;
/// Largest ACL file the broker reads.
pub const MAX_ACL_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest resource name or prefix an ACL names.
pub const MAX_ACL_NAME_BYTES: usize = 1024;
/// Longest principal or host an ACL names.
pub const MAX_ACL_PRINCIPAL_BYTES: usize = 1024;
/// Most super users.
pub const MAX_SUPER_USERS: usize = 1000;
/// The one cluster's resource name, as Kafka names it.
pub const CLUSTER_NAME: &str = "kafka-cluster";
/// A literal resource name that matches every resource of its kind.
pub const WILDCARD: &str = "*";
/// The principal of an ACL that applies to every authenticated caller.
pub const ANY_PRINCIPAL: &str = "User:*";
/// The prefix of every principal in an ACL (Kafka's principal type).
pub const USER_PREFIX: &str = "User:";

/// What kind of thing an ACL is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceType {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A transactional id.
    TransactionalId,
    /// The broker as a whole ([`CLUSTER_NAME`]).
    Cluster,
}

impl ResourceType {
    /// The name in files, logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "topic",
            ResourceType::Group => "group",
            ResourceType::TransactionalId => "transactional-id",
            ResourceType::Cluster => "cluster",
        }
    }
}

/// How an ACL's name matches resource names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternType {
    /// The name itself, or every name when it is [`WILDCARD`].
    #[default]
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// What an ACL allows or denies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Every operation.
    All,
    /// Consume from a topic; join, commit to and fetch a group.
    Read,
    /// Produce to a topic; use a transactional id.
    Write,
    /// Create a topic.
    Create,
    /// Delete a topic or a group.
    Delete,
    /// Change a topic (add partitions); on the cluster: abort others'
    /// transactions, delete topics, change ACLs.
    Alter,
    /// See that a resource exists and its state.
    Describe,
    /// Kafka's inter-broker operations on the cluster.
    ClusterAction,
    /// Read a resource's configs.
    DescribeConfigs,
    /// Change a resource's configs.
    AlterConfigs,
    /// Be an idempotent producer (on the cluster).
    IdempotentWrite,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 11] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
    ];

    /// The name in files, logs and messages.
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "all",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::ClusterAction => "cluster-action",
            Operation::DescribeConfigs => "describe-configs",
            Operation::AlterConfigs => "alter-configs",
            Operation::IdempotentWrite => "idempotent-write",
        }
    }

    /// Whether an allow rule for `self` allows `wanted`.
    fn allows(self, wanted: Operation) -> bool {
        self == Operation::All
            || self == wanted
            || match wanted {
                Operation::Describe => matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ),
                Operation::DescribeConfigs => self == Operation::AlterConfigs,
                _ => false,
            }
    }

    /// Whether a deny rule for `self` denies `wanted`.
    fn denies(self, wanted: Operation) -> bool {
        self == Operation::All || self == wanted
    }
}

impl std::str::FromStr for Operation {
    type Err = String;

    /// Parses an operation by its name ([`Operation::name`]).
    fn from_str(s: &str) -> Result<Operation, String> {
        Operation::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Operation::ALL.iter().map(|o| o.name()).collect();
                format!("unknown operation {s:?} (one of {})", names.join(", "))
            })
    }
}

/// A principal as ACLs spell it: `app` and `User:app` are both
/// `User:app`, and `*` is [`ANY_PRINCIPAL`].
pub fn principal_of(name: &str) -> String {
    if name == WILDCARD {
        ANY_PRINCIPAL.to_string()
    } else if name.starts_with(USER_PREFIX) {
        name.to_string()
    } else {
        format!("{USER_PREFIX}{name}")
    }
}

/// Whether an ACL allows or denies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Allows what it names.
    #[default]
    Allow,
    /// Denies what it names, whatever allows it.
    Deny,
}

fn any_host() -> String {
    WILDCARD.to_string()
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    /// `User:NAME` (the name a credential or certificate authenticates),
    /// or [`ANY_PRINCIPAL`].
    pub principal: String,
    /// The client's IP address, or `*` for any.
    #[serde(default = "any_host")]
    pub host: String,
    /// The kind of resource.
    pub resource: ResourceType,
    /// The name, prefix or [`WILDCARD`]; [`CLUSTER_NAME`] for the cluster.
    pub name: String,
    /// How `name` matches.
    #[serde(default)]
    pub pattern: PatternType,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    #[serde(default)]
    pub permission: Permission,
}

impl Acl {
    /// Checks the fields a file or a request can get wrong.
    pub fn check(&self) -> Result<(), String> {
        let Some(user) = self.principal.strip_prefix(USER_PREFIX) else {
            return Err(format!(
                "principal {:?} must be {USER_PREFIX}NAME or {ANY_PRINCIPAL}",
                self.principal
            ));
        };
        if user.is_empty() || self.principal.len() > MAX_ACL_PRINCIPAL_BYTES {
            return Err(format!(
                "principal must name a user in at most {MAX_ACL_PRINCIPAL_BYTES} bytes"
            ));
        }
        if self.host != WILDCARD && self.host.parse::<IpAddr>().is_err() {
            return Err(format!(
                "host {:?} must be an IP address or {WILDCARD}",
                self.host
            ));
        }
        if self.name.is_empty() || self.name.len() > MAX_ACL_NAME_BYTES {
            return Err(format!(
                "resource name must be 1 to {MAX_ACL_NAME_BYTES} bytes, got {}",
                self.name.len()
            ));
        }
        if self.resource == ResourceType::Cluster
            && (self.name != CLUSTER_NAME || self.pattern != PatternType::Literal)
        {
            return Err(format!(
                "a cluster ACL names the literal resource {CLUSTER_NAME:?}"
            ));
        }
        if self.pattern == PatternType::Prefixed && self.name == WILDCARD {
            return Err(format!(
                "a prefixed ACL cannot use {WILDCARD:?}; use a literal {WILDCARD:?} for every name"
            ));
        }
        if self.name.chars().any(char::is_control) || self.principal.chars().any(char::is_control) {
            return Err("an ACL's names may not contain control characters".into());
        }
        Ok(())
    }

    fn covers_principal(&self, who: &Principal) -> bool {
        self.principal == ANY_PRINCIPAL
            || self
                .principal
                .strip_prefix(USER_PREFIX)
                .is_some_and(|u| u == who.0)
    }

    fn covers_host(&self, host: Option<IpAddr>) -> bool {
        self.host == WILDCARD || host.is_some_and(|h| self.host.parse::<IpAddr>() == Ok(h))
    }

    fn covers_resource(&self, r: Resource<'_>) -> bool {
        self.resource == r.kind
            && match self.pattern {
                PatternType::Literal => self.name == WILDCARD || self.name == r.name,
                PatternType::Prefixed => r.name.starts_with(&self.name),
            }
    }

    fn applies(&self, caller: &Caller, who: &Principal, r: Resource<'_>) -> bool {
        self.covers_principal(who) && self.covers_host(caller.host) && self.covers_resource(r)
    }
}

/// A resource a request acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource<'a> {
    /// Its kind.
    pub kind: ResourceType,
    /// Its name.
    pub name: &'a str,
}

impl<'a> Resource<'a> {
    /// A topic.
    pub fn topic(name: &'a str) -> Resource<'a> {
        Resource {
            kind: ResourceType::Topic,
            name,
        }
    }
    /// A consumer group.
    pub fn group(name: &'a str) -> Resource<'a> {
        Resource {
            kind: ResourceType::Group,
            name,
        }
    }
    /// A transactional id.
    pub fn transactional_id(name: &'a str) -> Resource<'a> {
        Resource {
            kind: ResourceType::TransactionalId,
            name,
        }
    }
    /// The cluster.
    pub fn cluster() -> Resource<'static> {
        Resource {
            kind: ResourceType::Cluster,
            name: CLUSTER_NAME,
        }
    }
}

/// Who makes a request, and from where.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The authenticated principal, or `None` for an anonymous caller.
    pub principal: Option<Principal>,
    /// The client's address.
    pub host: Option<IpAddr>,
}

impl Caller {
    /// The principal as an ACL names it (`User:NAME`), or `ANONYMOUS`.
    pub fn display(&self) -> String {
        match &self.principal {
            Some(p) => format!("{USER_PREFIX}{}", p.0),
            None => format!("{USER_PREFIX}ANONYMOUS"),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {} {} {name:?}", operation.name(), resource.name())]
pub struct Denied {
    /// The caller, as an ACL would name it.
    pub principal: String,
    /// What it asked to do.
    pub operation: Operation,
    /// To what kind of resource.
    pub resource: ResourceType,
    /// Which one.
    pub name: String,
}

/// How a filter matches an ACL's pattern (Kafka's DescribeAcls and
/// DeleteAcls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternFilter {
    /// Any pattern, and any name if the filter names none.
    Any,
    /// The ACLs that apply to the filter's name: a literal ACL with that
    /// name or [`WILDCARD`], and a prefixed ACL the name starts with.
    Match,
    /// Exactly this pattern type (and the filter's name, if any).
    Exactly(PatternType),
}

/// A selection of ACLs; `None` fields match anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    /// The resource kind.
    pub resource: Option<ResourceType>,
    /// The resource name.
    pub name: Option<String>,
    /// How the name is compared.
    pub pattern: PatternFilter,
    /// The principal, as the ACL spells it.
    pub principal: Option<String>,
    /// The host, as the ACL spells it.
    pub host: Option<String>,
    /// The operation (exactly; `all` matches only `all` rules).
    pub operation: Option<Operation>,
    /// Allow or deny.
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// A filter that matches every ACL.
    pub fn any() -> AclFilter {
        AclFilter {
            resource: None,
            name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// Whether `acl` is selected.
    pub fn matches(&self, acl: &Acl) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let name = match (self.pattern, &self.name) {
            (PatternFilter::Any, n) => eq(n, &acl.name),
            (PatternFilter::Exactly(p), n) => p == acl.pattern && eq(n, &acl.name),
            (PatternFilter::Match, None) => true,
            (PatternFilter::Match, Some(n)) => match acl.pattern {
                PatternType::Literal => acl.name == *n || acl.name == WILDCARD,
                PatternType::Prefixed => n.starts_with(&acl.name),
            },
        };
        self.resource.is_none_or(|r| r == acl.resource)
            && name
            && eq(&self.principal, &acl.principal)
            && eq(&self.host, &acl.host)
            && self.operation.is_none_or(|o| o == acl.operation)
            && self.permission.is_none_or(|p| p == acl.permission)
    }
}

/// Why the ACL file cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// Reading or writing the file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file or an ACL is malformed.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default, rename = "acl")]
    acls: Vec<Acl>,
}

/// Parses and checks the text of an ACL file.
pub fn parse(text: &str) -> Result<Vec<Acl>, String> {
    let shape: FileShape = toml::from_str(text).map_err(|e| e.to_string())?;
    if shape.acls.len() > MAX_ACLS {
        return Err(format!(
            "{} ACLs is over the limit of {MAX_ACLS}",
            shape.acls.len()
        ));
    }
    for (i, acl) in shape.acls.iter().enumerate() {
        acl.check().map_err(|e| format!("acl {}: {e}", i + 1))?;
    }
    Ok(shape.acls)
}

/// Reads the ACL file at `path`; a missing file holds no ACLs.
pub fn load(path: &Path) -> Result<Vec<Acl>, AclError> {
    let io = |op, source| AclError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let size = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", e)),
        Ok(m) => m.len(),
    };
    if size > MAX_ACL_FILE_BYTES {
        return Err(AclError::Invalid(format!(
            "{}: {size} bytes is over the {MAX_ACL_FILE_BYTES}-byte limit",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| io("read", e))?;
    parse(&text).map_err(|e| AclError::Invalid(format!("{}: {e}", path.display())))
}

fn to_toml(acls: &[Acl]) -> String {
    let mut out = String::from(
        "# Ferry ACLs: one [[acl]] per rule. Rewritten by Kafka's CreateAcls and\n\
         # DeleteAcls; after editing by hand, send the broker SIGHUP.\n\n",
    );
    let shape = FileShape {
        acls: acls.to_vec(),
    };
    out.push_str(&toml::to_string(&shape).expect("ACLs serialize"));
    out
}

/// The broker's ACLs and the decision made with them.
#[derive(Debug)]
pub struct Authorizer {
    enabled: bool,
    /// Principal names (without `User:`) allowed everything.
    super_users: Vec<String>,
    path: PathBuf,
    acls: parking_lot::RwLock<Arc<Vec<Acl>>>,
    /// Serializes changes, so that two CreateAcls never lose one another.
    writer: parking_lot::Mutex<()>,
}

impl Authorizer {
    /// An authorizer that allows everything (no authentication).
    pub fn disabled() -> Authorizer {
        Authorizer {
            enabled: false,
            super_users: Vec::new(),
            path: PathBuf::new(),
            acls: parking_lot::RwLock::new(Arc::new(Vec::new())),
            writer: parking_lot::Mutex::new(()),
        }
    }

    /// An authorizer enforcing the ACLs of the file at `path` (created on
    /// the first change if missing), with `super_users` (`NAME` or
    /// `User:NAME`) allowed everything.
    pub fn open(path: &Path, super_users: &[String]) -> Result<Authorizer, AclError> {
        if super_users.len() > MAX_SUPER_USERS {
            return Err(AclError::Invalid(format!(
                "{} super users is over the limit of {MAX_SUPER_USERS}",
                super_users.len()
            )));
        }
        let acls = load(path)?;
        Ok(Authorizer {
            enabled: true,
            super_users: super_users
                .iter()
                .map(|s| s.strip_prefix(USER_PREFIX).unwrap_or(s).to_string())
                .collect(),
            path: path.to_path_buf(),
            acls: parking_lot::RwLock::new(Arc::new(acls)),
            writer: parking_lot::Mutex::new(()),
        })
    }

    /// Whether requests are checked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The ACL file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ACLs in force.
    pub fn current(&self) -> Arc<Vec<Acl>> {
        self.acls.read().clone()
    }

    /// Whether `caller` may do `op` on `resource`.
    pub fn authorize(
        &self,
        caller: &Caller,
        op: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Denied> {
        if self.decide(caller, op, resource) {
            return Ok(());
        }
        metrics::counter!(
            "ferry_authorization_denied_total",
            "resource" => resource.kind.name(),
            "operation" => op.name()
        )
        .increment(1);
        let denied = Denied {
            principal: caller.display(),
            operation: op,
            resource: resource.kind,
            name: resource.name.to_string(),
        };
        tracing::info!(host = ?caller.host, "{denied}");
        Err(denied)
    }

    /// Whether `caller` may do `op` on `resource`, without logging a
    /// refusal (for listings that leave out what the caller may not see).
    pub fn permits(&self, caller: &Caller, op: Operation, resource: Resource<'_>) -> bool {
        self.decide(caller, op, resource)
    }

    /// The decision no ACL takes part in: everyone is allowed without
    /// authorization, a super user always, an anonymous caller never.
    /// Otherwise the principal whose ACLs decide.
    fn settled<'c>(&self, caller: &'c Caller) -> Result<&'c Principal, bool> {
        if !self.enabled {
            return Err(true);
        }
        let who = caller.principal.as_ref().ok_or(false)?;
        if self.super_users.contains(&who.0) {
            return Err(true);
        }
        Ok(who)
    }

    fn decide(&self, caller: &Caller, op: Operation, resource: Resource<'_>) -> bool {
        let who = match self.settled(caller) {
            Ok(who) => who,
            Err(decided) => return decided,
        };
        let acls = self.current();
        let applying = || acls.iter().filter(|a| a.applies(caller, who, resource));
        if applying().any(|a| a.permission == Permission::Deny && a.operation.denies(op)) {
            return false;
        }
        applying().any(|a| a.permission == Permission::Allow && a.operation.allows(op))
    }

    /// Whether `caller` may do `op` on some resource of `kind` (Kafka's
    /// rule for an idempotent producer: write on any topic will do). An
    /// allow rule counts unless a deny of the same operation covers every
    /// name of the kind.
    pub fn permits_any(&self, caller: &Caller, op: Operation, kind: ResourceType) -> bool {
        let who = match self.settled(caller) {
            Ok(who) => who,
            Err(decided) => return decided,
        };
        let acls = self.current();
        let mine = || {
            acls.iter().filter(|a| {
                a.resource == kind && a.covers_principal(who) && a.covers_host(caller.host)
            })
        };
        let denied_everywhere = mine().any(|a| {
            a.permission == Permission::Deny
                && a.operation.denies(op)
                && a.pattern == PatternType::Literal
                && a.name == WILDCARD
        });
        !denied_everywhere
            && mine().any(|a| a.permission == Permission::Allow && a.operation.allows(op))
    }

    /// Rereads the file. A file that does not read or check leaves the
    /// ACLs in force as they were.
    pub fn reload(&self) -> Result<usize, AclError> {
        let _w = self.writer.lock();
        let fresh = load(&self.path)?;
        let n = fresh.len();
        *self.acls.write() = Arc::new(fresh);
        Ok(n)
    }

    /// Adds `acls` (each checked; one already present is kept once) and
    /// rewrites the file. Returns, per ACL, whether it was refused and why.
    pub fn create(&self, acls: Vec<Acl>) -> Result<Vec<Result<(), String>>, AclError> {
        let _w = self.writer.lock();
        let mut next = (*self.current()).clone();
        let mut results = Vec::with_capacity(acls.len());
        for acl in acls {
            let r = acl.check().and_then(|()| {
                if next.contains(&acl) {
                    Ok(())
                } else if next.len() >= MAX_ACLS {
                    Err(format!(
                        "the broker already holds its maximum of {MAX_ACLS} ACLs"
                    ))
                } else {
                    next.push(acl);
                    Ok(())
                }
            });
            results.push(r);
        }
        self.store(next)?;
        Ok(results)
    }

    /// Removes the ACLs each filter selects and rewrites the file.
    /// Returns, per filter, the ACLs it removed.
    pub fn delete(&self, filters: &[AclFilter]) -> Result<Vec<Vec<Acl>>, AclError> {
        let _w = self.writer.lock();
        let current = self.current();
        let removed: Vec<Vec<Acl>> = filters
            .iter()
            .map(|f| current.iter().filter(|a| f.matches(a)).cloned().collect())
            .collect();
        let next = current
            .iter()
            .filter(|a| !filters.iter().any(|f| f.matches(a)))
            .cloned()
            .collect();
        self.store(next)?;
        Ok(removed)
    }

    fn store(&self, acls: Vec<Acl>) -> Result<(), AclError> {
        ferry_storage::fsutil::atomic_write_mode(&self.path, to_toml(&acls).as_bytes(), 0o600)
            .map_err(|source| AclError::Io {
                op: "write",
                path: self.path.clone(),
                source,
            })?;
        *self.acls.write() = Arc::new(acls);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(principal: &str, resource: ResourceType, name: &str, op: Operation) -> Acl {
        Acl {
            principal: principal.into(),
            host: WILDCARD.into(),
            resource,
            name: name.into(),
            pattern: PatternType::Literal,
            operation: op,
            permission: Permission::Allow,
        }
    }

    fn with(acls: Vec<Acl>, super_users: &[&str]) -> (tempfile::TempDir, Authorizer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acls.toml");
        std::fs::write(&path, to_toml(&acls)).unwrap();
        let supers: Vec<String> = super_users.iter().map(|s| s.to_string()).collect();
        let a = Authorizer::open(&path, &supers).unwrap();
        (dir, a)
    }

    fn caller(p: &Principal) -> Caller {
        Caller {
            principal: Some(p.clone()),
            host: Some("127.0.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn nothing_is_allowed_that_no_acl_allows() {
        let (_d, a) = with(vec![], &[]);
        let alice = Principal("alice".into());
        let e = a
            .authorize(&caller(&alice), Operation::Read, Resource::topic("t"))
            .unwrap_err();
        assert_eq!(e.to_string(), "User:alice may not read topic \"t\"");
        // Anonymous is denied even with an ACL for every user.
        let (_d, a) = with(
            vec![acl(ANY_PRINCIPAL, ResourceType::Topic, "*", Operation::All)],
            &[],
        );
        assert!(!a.permits(&Caller::default(), Operation::Read, Resource::topic("t")));
        assert!(a.permits(&caller(&alice), Operation::Read, Resource::topic("t")));
    }

    #[test]
    fn literal_prefixed_and_wildcard_names_match_as_they_say() {
        let mut pre = acl(
            "User:alice",
            ResourceType::Topic,
            "orders.",
            Operation::Read,
        );
        pre.pattern = PatternType::Prefixed;
        let (_d, a) = with(
            vec![
                pre,
                acl("User:alice", ResourceType::Topic, "audit", Operation::Write),
                acl("User:alice", ResourceType::Group, "*", Operation::Read),
            ],
            &[],
        );
        let alice = Principal("alice".into());
        let c = caller(&alice);
        assert!(a.permits(&c, Operation::Read, Resource::topic("orders.eu")));
        assert!(!a.permits(&c, Operation::Read, Resource::topic("orders")));
        assert!(!a.permits(&c, Operation::Write, Resource::topic("orders.eu")));
        assert!(a.permits(&c, Operation::Write, Resource::topic("audit")));
        assert!(!a.permits(&c, Operation::Write, Resource::topic("audit2")));
        assert!(a.permits(&c, Operation::Read, Resource::group("anything")));
        assert!(!a.permits(&c, Operation::Read, Resource::transactional_id("anything")));
        let bob = Principal("bob".into());
        assert!(!a.permits(&caller(&bob), Operation::Read, Resource::topic("orders.eu")));
    }

    #[test]
    fn allow_rules_imply_describe_and_deny_beats_allow() {
        let mut deny = acl("User:alice", ResourceType::Topic, "secret", Operation::Read);
        deny.permission = Permission::Deny;
        let (_d, a) = with(
            vec![
                acl("User:alice", ResourceType::Topic, "*", Operation::Read),
                deny,
                acl(
                    "User:alice",
                    ResourceType::Cluster,
                    CLUSTER_NAME,
                    Operation::AlterConfigs,
                ),
            ],
            &[],
        );
        let alice = Principal("alice".into());
        let c = caller(&alice);
        assert!(a.permits(&c, Operation::Describe, Resource::topic("x")));
        assert!(a.permits(&c, Operation::Read, Resource::topic("x")));
        assert!(!a.permits(&c, Operation::Read, Resource::topic("secret")));
        // Denying read does not deny describe.
        assert!(a.permits(&c, Operation::Describe, Resource::topic("secret")));
        assert!(a.permits(&c, Operation::DescribeConfigs, Resource::cluster()));
        assert!(!a.permits(&c, Operation::Alter, Resource::cluster()));
        assert!(a.permits_any(&c, Operation::Read, ResourceType::Topic));
        assert!(!a.permits_any(&c, Operation::Write, ResourceType::Topic));
    }

    #[test]
    fn hosts_and_super_users_and_a_disabled_authorizer() {
        let mut from = acl("User:alice", ResourceType::Topic, "t", Operation::Read);
        from.host = "10.0.0.1".into();
        let (_d, a) = with(vec![from], &["User:root"]);
        let alice = Principal("alice".into());
        assert!(!a.permits(&caller(&alice), Operation::Read, Resource::topic("t")));
        let remote = Caller {
            principal: Some(alice.clone()),
            host: Some("10.0.0.1".parse().unwrap()),
        };
        assert!(a.permits(&remote, Operation::Read, Resource::topic("t")));
        let root = Principal("root".into());
        assert!(a.permits(&caller(&root), Operation::Alter, Resource::cluster()));
        assert!(Authorizer::disabled().permits(
            &Caller::default(),
            Operation::Delete,
            Resource::topic("t")
        ));
    }

    #[test]
    fn changes_are_checked_persisted_and_survive_a_reopen() {
        let (d, a) = with(vec![], &[]);
        let good = acl("User:alice", ResourceType::Topic, "t", Operation::Read);
        let mut bad = good.clone();
        bad.principal = "alice".into();
        let r = a.create(vec![good.clone(), bad, good.clone()]).unwrap();
        assert!(r[0].is_ok() && r[1].is_err() && r[2].is_ok(), "{r:?}");
        assert_eq!(*a.current(), vec![good.clone()]);
        let again = Authorizer::open(&d.path().join("acls.toml"), &[]).unwrap();
        assert_eq!(*again.current(), vec![good.clone()]);
        let mut f = AclFilter::any();
        f.pattern = PatternFilter::Match;
        f.name = Some("t".into());
        assert_eq!(a.delete(&[f]).unwrap(), vec![vec![good]]);
        assert!(a.current().is_empty());
        a.reload().unwrap();
        assert!(a.current().is_empty());
        // A broken file leaves the ACLs in force.
        std::fs::write(d.path().join("acls.toml"), "[[acl]]\nprincipal = 1\n").unwrap();
        assert!(a.reload().is_err());
    }

    #[test]
    fn malformed_acls_are_refused_with_the_reason() {
        for (text, why) in [
            (
                "[[acl]]\nprincipal = \"alice\"\nresource = \"topic\"\nname = \"t\"\noperation = \"read\"\n",
                "User:NAME",
            ),
            (
                "[[acl]]\nprincipal = \"User:a\"\nresource = \"cluster\"\nname = \"t\"\noperation = \"read\"\n",
                "kafka-cluster",
            ),
            (
                "[[acl]]\nprincipal = \"User:a\"\nhost = \"example.com\"\nresource = \"topic\"\nname = \"t\"\noperation = \"read\"\n",
                "IP address",
            ),
            (
                "[[acl]]\nprincipal = \"User:a\"\nresource = \"topic\"\nname = \"t\"\noperation = \"fly\"\n",
                "unknown variant",
            ),
            (
                "[[acl]]\nprincipal = \"User:a\"\nresource = \"topic\"\nname = \"\"\noperation = \"read\"\n",
                "1 to",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
