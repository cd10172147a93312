//! The group membership flags `ferry consume` and `ferry copy` share.

use std::time::Duration;

use ferry_client::ConsumerConfig;
use ferry_client::group::DEFAULT_ASSIGNORS;

/// Group membership flags.
#[derive(Debug, Clone, clap::Args)]
pub struct MemberArgs {
    /// Partition assignors to offer, most preferred first, comma-separated:
    /// range, roundrobin, cooperative-sticky.
    #[arg(long = "assignor", value_delimiter = ',', default_values_t = DEFAULT_ASSIGNORS.map(String::from))]
    assignors: Vec<String>,
    /// Static membership: a member that comes back with the same id within
    /// its session timeout keeps its partitions, with no rebalance.
    #[arg(long)]
    instance_id: Option<String>,
    /// How long the group keeps this member after its heartbeats stop.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
}

impl MemberArgs {
    /// The consumer settings these flags stand for, on top of `config`.
    pub fn apply(&self, config: ConsumerConfig) -> Result<ConsumerConfig, String> {
        if self.session_timeout_ms < 3 {
            return Err("--session-timeout-ms must be at least 3".into());
        }
        let session = Duration::from_millis(self.session_timeout_ms);
        Ok(ConsumerConfig {
            assignors: self.assignors.clone(),
            group_instance_id: self.instance_id.clone(),
            session_timeout: session,
            heartbeat_interval: session / 3,
            ..config
        })
    }
}
