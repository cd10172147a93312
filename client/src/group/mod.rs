//! Consumer groups, from the client's side.

mod assignor;
mod protocol;
mod range;
mod roundrobin;
mod sticky;
#[cfg(test)]
mod testing;

pub use assignor::{
    AssignmentChange, Assignor, DEFAULT_ASSIGNORS, GroupAssignment, MemberId, MemberSubscription,
    RebalanceProtocol, UnknownAssignor, assignors, by_name, default_assignors,
};
pub use protocol::{
    ASSIGNMENT_VERSION, Assignment, MAX_KNOWN_SUBSCRIPTION_VERSION, MAX_NAME_BYTES,
    MAX_PARTITIONS_PER_ASSIGNMENT, MAX_RACK_ID_BYTES, MAX_TOPICS_PER_SUBSCRIPTION,
    MAX_USER_DATA_BYTES, ProtocolError, SUBSCRIPTION_VERSION, Subscription, TopicPartitions,
};
pub use range::RangeAssignor;
pub use roundrobin::RoundRobinAssignor;
pub use sticky::CooperativeStickyAssignor;
