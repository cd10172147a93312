//! What each request needs: the one table from a request to the ACL
//! operations it must be allowed. The gRPC and Kafka front ends name the
//! [`Action`] a request takes (one per topic, group or transactional id
//! it touches) and [`Authorizer::check`] decides, so that a produce needs
//! the same right whichever protocol carries it.

use super::acl::{Authorizer, Caller, Denied, Operation, Resource, ResourceType};

/// One thing a request does, as the authorizer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Create a topic: create on the topic or on the cluster.
    CreateTopic(&'a str),
    /// Delete a topic: delete on the topic, or alter on the cluster.
    DeleteTopic(&'a str),
    /// See a topic, its partitions and offsets: describe on it.
    DescribeTopic(&'a str),
    /// Add partitions to a topic: alter on it.
    AlterTopic(&'a str),
    /// Read a topic's configs: describe-configs on it.
    DescribeTopicConfigs(&'a str),
    /// Read the broker's configs: describe-configs on the cluster.
    DescribeClusterConfigs,
    /// Append to a topic: write on it, and write on the transactional id
    /// when the producer names one.
    Produce {
        /// The topic.
        topic: &'a str,
        /// The producer's transactional id, when the request carries it.
        transactional_id: Option<&'a str>,
    },
    /// Fetch from a topic, or see its producers: read on it.
    Consume(&'a str),
    /// Get a producer id: write on the transactional id; without one,
    /// idempotent-write on the cluster or write on some topic.
    InitProducer(Option<&'a str>),
    /// Add partitions or a group to a transaction, or end it: write on
    /// the transactional id.
    UseTransaction(&'a str),
    /// See a transaction: describe on the transactional id.
    DescribeTransaction(&'a str),
    /// Abort another producer's transaction (`ferry txn abort`): alter
    /// on the cluster.
    AbortTransaction,
    /// Join, sync, heartbeat, leave, or commit into a group: read on it.
    UseGroup(&'a str),
    /// Commit an offset of a topic: read on the topic.
    CommitTopic(&'a str),
    /// See a group, its members or offsets: describe on it.
    DescribeGroup(&'a str),
    /// Delete a group: delete on it.
    DeleteGroup(&'a str),
    /// List every group or transaction, describe the cluster or its
    /// ACLs: describe on the cluster.
    DescribeCluster,
    /// Create or delete ACLs: alter on the cluster.
    AlterCluster,
}

impl Authorizer {
    /// Whether `caller` may take `action`; the refusal names the first
    /// right it lacks.
    pub fn check(&self, caller: &Caller, action: Action<'_>) -> Result<(), Denied> {
        use Operation as Op;
        let either = |a: (Op, Resource<'_>), b: (Op, Resource<'_>)| {
            if self.permits(caller, b.0, b.1) {
                Ok(())
            } else {
                self.authorize(caller, a.0, a.1)
            }
        };
        match action {
            Action::CreateTopic(t) => either(
                (Op::Create, Resource::topic(t)),
                (Op::Create, Resource::cluster()),
            ),
            Action::DeleteTopic(t) => either(
                (Op::Delete, Resource::topic(t)),
                (Op::Alter, Resource::cluster()),
            ),
            Action::DescribeTopic(t) => self.authorize(caller, Op::Describe, Resource::topic(t)),
            Action::AlterTopic(t) => self.authorize(caller, Op::Alter, Resource::topic(t)),
            Action::DescribeTopicConfigs(t) => {
                self.authorize(caller, Op::DescribeConfigs, Resource::topic(t))
            }
            Action::DescribeClusterConfigs => {
                self.authorize(caller, Op::DescribeConfigs, Resource::cluster())
            }
            Action::Produce {
                topic,
                transactional_id,
            } => {
                if let Some(id) = transactional_id {
                    self.authorize(caller, Op::Write, Resource::transactional_id(id))?;
                }
                self.authorize(caller, Op::Write, Resource::topic(topic))
            }
            Action::Consume(t) => self.authorize(caller, Op::Read, Resource::topic(t)),
            Action::InitProducer(Some(id)) => {
                self.authorize(caller, Op::Write, Resource::transactional_id(id))
            }
            Action::InitProducer(None) => {
                if self.permits_any(caller, Op::Write, ResourceType::Topic) {
                    Ok(())
                } else {
                    self.authorize(caller, Op::IdempotentWrite, Resource::cluster())
                }
            }
            Action::UseTransaction(id) => {
                self.authorize(caller, Op::Write, Resource::transactional_id(id))
            }
            Action::DescribeTransaction(id) => {
                self.authorize(caller, Op::Describe, Resource::transactional_id(id))
            }
            Action::AbortTransaction | Action::AlterCluster => {
                self.authorize(caller, Op::Alter, Resource::cluster())
            }
            Action::UseGroup(g) => self.authorize(caller, Op::Read, Resource::group(g)),
            Action::CommitTopic(t) => self.authorize(caller, Op::Read, Resource::topic(t)),
            Action::DescribeGroup(g) => self.authorize(caller, Op::Describe, Resource::group(g)),
            Action::DeleteGroup(g) => self.authorize(caller, Op::Delete, Resource::group(g)),
            Action::DescribeCluster => self.authorize(caller, Op::Describe, Resource::cluster()),
        }
    }

    /// Like [`Authorizer::check`], without logging or counting a refusal:
    /// for listings, which leave out what the caller may not see.
    pub fn allows(&self, caller: &Caller, action: Action<'_>) -> bool {
        if !self.enabled() {
            return true;
        }
        let quiet = |op, r| self.permits(caller, op, r);
        match action {
            Action::DescribeTopic(t) => quiet(Operation::Describe, Resource::topic(t)),
            Action::DescribeGroup(g) => quiet(Operation::Describe, Resource::group(g)),
            Action::DescribeTransaction(id) => {
                quiet(Operation::Describe, Resource::transactional_id(id))
            }
            Action::DescribeCluster => quiet(Operation::Describe, Resource::cluster()),
            other => self.check(caller, other).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Principal;
    use super::super::acl::{Acl, PatternType, Permission, WILDCARD};
    use super::*;

    fn allow(resource: ResourceType, name: &str, operation: Operation) -> Acl {
        Acl {
            principal: "User:app".into(),
            host: WILDCARD.into(),
            resource,
            name: name.into(),
            pattern: PatternType::Literal,
            operation,
            permission: Permission::Allow,
        }
    }

    #[test]
    fn indirect_rights_are_required_as_the_table_says() {
        let dir = tempfile::tempdir().unwrap();
        let a = Authorizer::open(&dir.path().join("acls.toml"), &[]).unwrap();
        let app = Caller {
            principal: Some(Principal("app".into())),
            host: None,
        };
        // Nothing yet: an idempotent producer may not even get an id.
        assert!(a.check(&app, Action::InitProducer(None)).is_err());
        a.create(vec![allow(ResourceType::Topic, "out", Operation::Write)])
            .unwrap();
        // Write on some topic makes an idempotent producer.
        a.check(&app, Action::InitProducer(None)).unwrap();
        a.check(
            &app,
            Action::Produce {
                topic: "out",
                transactional_id: None,
            },
        )
        .unwrap();
        // A transactional produce needs the transactional id too.
        let e = a
            .check(
                &app,
                Action::Produce {
                    topic: "out",
                    transactional_id: Some("billing"),
                },
            )
            .unwrap_err();
        assert_eq!(e.resource, ResourceType::TransactionalId);
        a.create(vec![allow(
            ResourceType::TransactionalId,
            "billing",
            Operation::Write,
        )])
        .unwrap();
        a.check(&app, Action::UseTransaction("billing")).unwrap();
        // Committing needs read on the group and on the topic.
        assert!(a.check(&app, Action::UseGroup("g")).is_err());
        a.create(vec![allow(ResourceType::Group, "g", Operation::Read)])
            .unwrap();
        a.check(&app, Action::UseGroup("g")).unwrap();
        assert!(a.check(&app, Action::CommitTopic("out")).is_err());
        // Aborting someone's transaction and deleting a topic need more.
        let e = a.check(&app, Action::AbortTransaction).unwrap_err();
        assert_eq!(e.resource, ResourceType::Cluster);
        assert!(a.check(&app, Action::DeleteTopic("out")).is_err());
        a.create(vec![allow(
            ResourceType::Cluster,
            "kafka-cluster",
            Operation::Alter,
        )])
        .unwrap();
        a.check(&app, Action::DeleteTopic("out")).unwrap();
        a.check(&app, Action::AbortTransaction).unwrap();
        // Listings see what describe allows; write implies describe.
        assert!(a.allows(&app, Action::DescribeTopic("out")));
        assert!(!a.allows(&app, Action::DescribeTopic("other")));
    }
}
