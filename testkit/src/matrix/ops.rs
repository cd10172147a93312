//! What a run is made of: the fault classes and the operations of a workload.

use super::*;

/// The fault classes of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultClass {
    /// Produce (and transaction) responses dropped after the broker
    /// applied the request.
    LostResponse,
    /// The broker crashes (no flush) and restarts; recovery runs.
    BrokerKill,
    /// The broker crashes, the non-durable tail of every log is torn
    /// (zeroed from a random byte, garbage written), and it restarts.
    TornTail,
    /// The consumer (for exactly-once: the copier) crashes before its
    /// commit and comes back from the group's committed offsets.
    ConsumerCrash,
    /// A second producer instance takes over while the first keeps going:
    /// with transactions, the same transactional id fences the first; for
    /// the other modes, a stale producer keeps sending after a broker
    /// restart, next to its replacement.
    ZombieProducer,
    /// The consuming side is a group of several members (consumers, or
    /// copiers with their own transactional ids) sharing the partitions;
    /// one member is killed or paused past its maximum poll interval, and
    /// a new one joins. See [`group`](super::group).
    GroupRebalance,
}

impl FaultClass {
    /// Every class.
    pub const ALL: [FaultClass; 6] = [
        FaultClass::LostResponse,
        FaultClass::BrokerKill,
        FaultClass::TornTail,
        FaultClass::ConsumerCrash,
        FaultClass::ZombieProducer,
        FaultClass::GroupRebalance,
    ];

    /// The class's name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::LostResponse => "lost-response",
            FaultClass::BrokerKill => "broker-kill",
            FaultClass::TornTail => "torn-tail",
            FaultClass::ConsumerCrash => "consumer-crash",
            FaultClass::ZombieProducer => "zombie-producer",
            FaultClass::GroupRebalance => "group-rebalance",
        }
    }

    /// Parses a comma-separated list of names, or `all`.
    pub fn parse_list(s: &str) -> Result<Vec<FaultClass>, String> {
        if s.trim() == "all" {
            return Ok(FaultClass::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let class = part.parse::<FaultClass>()?;
            if !out.contains(&class) {
                out.push(class);
            }
        }
        if out.is_empty() {
            return Err("no fault class given".into());
        }
        Ok(out)
    }
}

impl std::str::FromStr for FaultClass {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultClass, String> {
        FaultClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = FaultClass::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown fault class {s:?}: expected all or a list of {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a delivery mode name (`at-most-once`, `at-least-once`,
/// `idempotent`, `exactly-once`).
pub fn parse_mode(s: &str) -> Result<DeliveryMode, String> {
    s.parse::<DeliveryMode>().map_err(|_| {
        format!(
            "unknown mode {s:?}: expected at-most-once, at-least-once, idempotent or exactly-once"
        )
    })
}

/// One step of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkOp {
    /// Hand `records` fresh values to the producer, spread over the
    /// partitions. For exactly-once they go into a source transaction that
    /// the next op settles: committed, or aborted if `abort`.
    Produce {
        /// How many records.
        records: u8,
        /// Exactly-once only: abort the transaction instead of committing.
        abort: bool,
    },
    /// Run this many consumer (or copier) steps.
    Consume {
        /// Steps.
        steps: u8,
    },
    /// Inject the run's fault class number `class` (modulo the number of
    /// classes); `choice` picks details such as the crash point.
    Fault {
        /// Which class of the run.
        class: u8,
        /// Seeds the details.
        choice: u8,
    },
}

impl std::fmt::Display for WorkOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkOp::Produce { records, abort } => {
                write!(
                    f,
                    "produce({records}{})",
                    if *abort { ", abort" } else { "" }
                )
            }
            WorkOp::Consume { steps } => write!(f, "consume({steps})"),
            WorkOp::Fault { class, choice } => write!(f, "fault({class}, {choice})"),
        }
    }
}
