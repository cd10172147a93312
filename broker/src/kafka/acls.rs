//! DescribeAcls, CreateAcls and DeleteAcls: Kafka's admin API over the
//! broker's ACLs ([`crate::auth::acl`]), so that `kafka-acls`, kcat's
//! and the client libraries' admin calls read and change the same rules
//! the broker enforces. Changes are written to the ACL file before the
//! response leaves. Without authentication there are no ACLs, and every
//! call answers SECURITY_DISABLED, as Kafka does without an authorizer.

use kafka_protocol::messages::create_acls_request::{AclCreation, CreateAclsRequest};
use kafka_protocol::messages::create_acls_response::{AclCreationResult, CreateAclsResponse};
use kafka_protocol::messages::delete_acls_request::{DeleteAclsFilter, DeleteAclsRequest};
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl, DeleteAclsResponse,
};
use kafka_protocol::messages::describe_acls_request::DescribeAclsRequest;
use kafka_protocol::messages::describe_acls_response::{
    AclDescription, DescribeAclsResource, DescribeAclsResponse,
};

use super::conn::Ctx;
use super::errors::code;
use super::metadata::str;
use crate::auth::acl::{
    Acl, AclFilter, Operation, PatternFilter, PatternType, Permission, ResourceType,
};
use crate::auth::actions::Action;

/// Kafka's resource type numbers (`ResourceType`).
mod resource {
    pub const ANY: i8 = 1;
    pub const TOPIC: i8 = 2;
    pub const GROUP: i8 = 3;
    pub const CLUSTER: i8 = 4;
    pub const TRANSACTIONAL_ID: i8 = 5;
}

/// Kafka's pattern type numbers (`PatternType`).
mod pattern {
    pub const ANY: i8 = 1;
    pub const MATCH: i8 = 2;
    pub const LITERAL: i8 = 3;
    pub const PREFIXED: i8 = 4;
}

/// Kafka's permission numbers (`AclPermissionType`).
mod permission {
    pub const ANY: i8 = 1;
    pub const DENY: i8 = 2;
    pub const ALLOW: i8 = 3;
}

/// Kafka's "any operation" in a filter (`AclOperation.ANY`).
const OPERATION_ANY: i8 = 1;

fn resource_type(n: i8) -> Option<ResourceType> {
    match n {
        resource::TOPIC => Some(ResourceType::Topic),
        resource::GROUP => Some(ResourceType::Group),
        resource::CLUSTER => Some(ResourceType::Cluster),
        resource::TRANSACTIONAL_ID => Some(ResourceType::TransactionalId),
        _ => None,
    }
}

fn resource_number(r: ResourceType) -> i8 {
    match r {
        ResourceType::Topic => resource::TOPIC,
        ResourceType::Group => resource::GROUP,
        ResourceType::Cluster => resource::CLUSTER,
        ResourceType::TransactionalId => resource::TRANSACTIONAL_ID,
    }
}

fn pattern_number(p: PatternType) -> i8 {
    match p {
        PatternType::Literal => pattern::LITERAL,
        PatternType::Prefixed => pattern::PREFIXED,
    }
}

/// Kafka's `AclOperation` numbers run from ALL (2) in [`Operation::ALL`]'s
/// order.
fn operation(n: i8) -> Option<Operation> {
    usize::try_from(i16::from(n) - 2)
        .ok()
        .and_then(|i| Operation::ALL.get(i).copied())
}

fn operation_number(o: Operation) -> i8 {
    let i = Operation::ALL.iter().position(|x| *x == o).expect("listed");
    i as i8 + 2
}

fn permission_of(n: i8) -> Option<Permission> {
    match n {
        permission::ALLOW => Some(Permission::Allow),
        permission::DENY => Some(Permission::Deny),
        _ => None,
    }
}

fn permission_number(p: Permission) -> i8 {
    match p {
        Permission::Allow => permission::ALLOW,
        Permission::Deny => permission::DENY,
    }
}

/// An ACL a CreateAcls entry names, or why it names none.
fn acl_of(c: &AclCreation) -> Result<Acl, String> {
    let resource = resource_type(c.resource_type)
        .ok_or_else(|| format!("resource type {} is not one ACLs apply to", c.resource_type))?;
    let pattern = match c.resource_pattern_type {
        pattern::LITERAL => PatternType::Literal,
        pattern::PREFIXED => PatternType::Prefixed,
        n => {
            return Err(format!(
                "pattern type {n} cannot be created (literal or prefixed)"
            ));
        }
    };
    let acl = Acl {
        principal: c.principal.to_string(),
        host: c.host.to_string(),
        resource,
        name: c.resource_name.to_string(),
        pattern,
        operation: operation(c.operation)
            .ok_or_else(|| format!("operation {} cannot be created", c.operation))?,
        permission: permission_of(c.permission_type)
            .ok_or_else(|| format!("permission {} cannot be created", c.permission_type))?,
    };
    acl.check()?;
    Ok(acl)
}

/// The filter of a DescribeAcls or DeleteAcls request.
struct RawFilter<'a> {
    resource: i8,
    name: Option<&'a str>,
    pattern: i8,
    principal: Option<&'a str>,
    host: Option<&'a str>,
    operation: i8,
    permission: i8,
}

fn filter_of(f: RawFilter<'_>) -> Result<AclFilter, String> {
    let resource = match f.resource {
        resource::ANY => None,
        n => Some(resource_type(n).ok_or_else(|| format!("resource type {n} is unknown"))?),
    };
    let pattern = match f.pattern {
        pattern::ANY => PatternFilter::Any,
        pattern::MATCH => PatternFilter::Match,
        pattern::LITERAL => PatternFilter::Exactly(PatternType::Literal),
        pattern::PREFIXED => PatternFilter::Exactly(PatternType::Prefixed),
        n => return Err(format!("pattern type {n} is unknown")),
    };
    let operation = match f.operation {
        OPERATION_ANY => None,
        n => Some(operation(n).ok_or_else(|| format!("operation {n} is unknown"))?),
    };
    let permission = match f.permission {
        permission::ANY => None,
        n => Some(permission_of(n).ok_or_else(|| format!("permission {n} is unknown"))?),
    };
    Ok(AclFilter {
        resource,
        name: f.name.map(str::to_string),
        pattern,
        principal: f.principal.map(str::to_string),
        host: f.host.map(str::to_string),
        operation,
        permission,
    })
}

/// The error every ACL call answers before touching the ACLs: none,
/// security disabled, or not authorized (`action` on the cluster).
fn refusal(cx: &Ctx<'_>, action: Action<'_>) -> Option<(i16, String)> {
    if !cx.state().acls().enabled() {
        return Some((
            cx.raw(code::SECURITY_DISABLED),
            "this broker does not authenticate its clients, so it has no ACLs".into(),
        ));
    }
    cx.authorize(action)
        .err()
        .map(|e| (cx.code(&e), e.to_string()))
}

pub(crate) async fn describe_acls(cx: &Ctx<'_>, req: DescribeAclsRequest) -> DescribeAclsResponse {
    let mut resp = DescribeAclsResponse::default();
    if let Some((code, message)) = refusal(cx, Action::DescribeCluster) {
        resp.error_code = code;
        resp.error_message = Some(str(&message));
        return resp;
    }
    let filter = match filter_of(RawFilter {
        resource: req.resource_type_filter,
        name: req.resource_name_filter.as_deref(),
        pattern: req.pattern_type_filter,
        principal: req.principal_filter.as_deref(),
        host: req.host_filter.as_deref(),
        operation: req.operation,
        permission: req.permission_type,
    }) {
        Ok(f) => f,
        Err(message) => {
            resp.error_code = cx.raw(code::INVALID_REQUEST);
            resp.error_message = Some(str(&message));
            return resp;
        }
    };
    for acl in cx
        .state()
        .acls()
        .current()
        .iter()
        .filter(|a| filter.matches(a))
    {
        let key = (
            resource_number(acl.resource),
            acl.name.as_str(),
            pattern_number(acl.pattern),
        );
        let at = match resp
            .resources
            .iter()
            .position(|r| (r.resource_type, r.resource_name.as_str(), r.pattern_type) == key)
        {
            Some(i) => i,
            None => {
                let mut r = DescribeAclsResource::default();
                r.resource_type = key.0;
                r.resource_name = str(key.1);
                r.pattern_type = key.2;
                resp.resources.push(r);
                resp.resources.len() - 1
            }
        };
        let mut d = AclDescription::default();
        d.principal = str(&acl.principal);
        d.host = str(&acl.host);
        d.operation = operation_number(acl.operation);
        d.permission_type = permission_number(acl.permission);
        resp.resources[at].acls.push(d);
    }
    resp
}

pub(crate) async fn create_acls(cx: &Ctx<'_>, req: CreateAclsRequest) -> CreateAclsResponse {
    let mut resp = CreateAclsResponse::default();
    let answer = |code: i16, message: Option<&str>| {
        let mut r = AclCreationResult::default();
        r.error_code = code;
        r.error_message = message.map(str);
        r
    };
    if let Some((code, message)) = refusal(cx, Action::AlterCluster) {
        resp.results = req
            .creations
            .iter()
            .map(|_| answer(code, Some(&message)))
            .collect();
        return resp;
    }
    let parsed: Vec<Result<Acl, String>> = req.creations.iter().map(acl_of).collect();
    let valid: Vec<Acl> = parsed.iter().filter_map(|r| r.clone().ok()).collect();
    let state = cx.state().clone();
    let stored = tokio::task::spawn_blocking(move || state.acls().create(valid))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let mut outcomes = match &stored {
        Ok(results) => results.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    resp.results = parsed
        .iter()
        .map(|p| match (p, &stored) {
            (Err(why), _) => answer(cx.raw(code::INVALID_REQUEST), Some(why)),
            (Ok(_), Err(why)) => {
                tracing::error!(error = %why, "cannot store the ACLs");
                answer(cx.raw(code::UNKNOWN_SERVER_ERROR), Some(why))
            }
            (Ok(acl), Ok(_)) => match outcomes.next() {
                Some(Ok(())) => {
                    tracing::info!(principal = %acl.principal, resource = acl.resource.name(), name = %acl.name, operation = acl.operation.name(), "created an ACL");
                    answer(code::NONE, None)
                }
                Some(Err(why)) => answer(cx.raw(code::INVALID_REQUEST), Some(&why)),
                None => answer(cx.raw(code::UNKNOWN_SERVER_ERROR), Some("lost result")),
            },
        })
        .collect();
    resp
}

pub(crate) async fn delete_acls(cx: &Ctx<'_>, req: DeleteAclsRequest) -> DeleteAclsResponse {
    let mut resp = DeleteAclsResponse::default();
    let answer = |code: i16, message: Option<&str>| {
        let mut r = DeleteAclsFilterResult::default();
        r.error_code = code;
        r.error_message = message.map(str);
        r
    };
    if let Some((code, message)) = refusal(cx, Action::AlterCluster) {
        resp.filter_results = req
            .filters
            .iter()
            .map(|_| answer(code, Some(&message)))
            .collect();
        return resp;
    }
    let parsed: Vec<Result<AclFilter, String>> = req
        .filters
        .iter()
        .map(|f: &DeleteAclsFilter| {
            filter_of(RawFilter {
                resource: f.resource_type_filter,
                name: f.resource_name_filter.as_deref(),
                pattern: f.pattern_type_filter,
                principal: f.principal_filter.as_deref(),
                host: f.host_filter.as_deref(),
                operation: f.operation,
                permission: f.permission_type,
            })
        })
        .collect();
    let valid: Vec<AclFilter> = parsed.iter().filter_map(|r| r.clone().ok()).collect();
    let state = cx.state().clone();
    let removed = tokio::task::spawn_blocking(move || state.acls().delete(&valid))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let mut per_filter = match &removed {
        Ok(r) => r.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    resp.filter_results = parsed
        .iter()
        .map(|p| match (p, &removed) {
            (Err(why), _) => answer(cx.raw(code::INVALID_REQUEST), Some(why)),
            (Ok(_), Err(why)) => {
                tracing::error!(error = %why, "cannot store the ACLs");
                answer(cx.raw(code::UNKNOWN_SERVER_ERROR), Some(why))
            }
            (Ok(_), Ok(_)) => {
                let mut r = answer(code::NONE, None);
                r.matching_acls = per_filter
                    .next()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|acl| {
                        let mut m = DeleteAclsMatchingAcl::default();
                        m.resource_type = resource_number(acl.resource);
                        m.resource_name = str(&acl.name);
                        m.pattern_type = pattern_number(acl.pattern);
                        m.principal = str(&acl.principal);
                        m.host = str(&acl.host);
                        m.operation = operation_number(acl.operation);
                        m.permission_type = permission_number(acl.permission);
                        m
                    })
                    .collect();
                if !r.matching_acls.is_empty() {
                    tracing::info!(removed = r.matching_acls.len(), "deleted ACLs");
                }
                r
            }
        })
        .collect();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_numbers_are_kafkas() {
        // org.apache.kafka.common.acl.AclOperation
        for (n, op) in [
            (2, Operation::All),
            (3, Operation::Read),
            (4, Operation::Write),
            (5, Operation::Create),
            (6, Operation::Delete),
            (7, Operation::Alter),
            (8, Operation::Describe),
            (9, Operation::ClusterAction),
            (10, Operation::DescribeConfigs),
            (11, Operation::AlterConfigs),
            (12, Operation::IdempotentWrite),
        ] {
            assert_eq!(operation(n), Some(op));
            assert_eq!(operation_number(op), n);
        }
        assert_eq!(operation(0), None);
        assert_eq!(operation(1), None);
        assert_eq!(operation(13), None);
        assert_eq!(operation(-128), None);
    }
}
