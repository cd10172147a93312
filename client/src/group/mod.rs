//! Consumer groups, from the client's side.

mod protocol;

pub use protocol::{
    ASSIGNMENT_VERSION, Assignment, MAX_KNOWN_SUBSCRIPTION_VERSION, MAX_NAME_BYTES,
    MAX_PARTITIONS_PER_ASSIGNMENT, MAX_RACK_ID_BYTES, MAX_TOPICS_PER_SUBSCRIPTION,
    MAX_USER_DATA_BYTES, ProtocolError, SUBSCRIPTION_VERSION, Subscription, TopicPartitions,
};
