//! The consumer-group coordinator: the classic Kafka group protocol
//! (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), its admin requests, and
//! the fencing of offset commits by generation and member.
//!
//! Split like the transaction coordinator:
//!
//! - `state`: [`Group`], [`GroupState`] and the pure transition function
//!   `state::apply` (the full table in its docs, tested by a table), and
//!   `state::check_commit`, the commit-fencing rule.
//! - `coordinator`: one group per name behind an async lock, the parked
//!   Join/Sync answers, the timer (session expiry, the rebalance and
//!   initial-delay deadlines), and persistence.
//! - `codec`: the group metadata record of the offsets log.
//!
//! ```text
//!            join                 all joined / deadline          leader's sync
//!   Empty ─────────▶ PreparingRebalance ─────────────▶ CompletingRebalance ─────────▶ Stable
//!     ▲                  ▲    │ nobody left                │ join (changed), leave,      │
//!     │                  │    ▼                            │ expiry, sync deadline       │
//!     └──────────────────┼── Empty (generation + 1)        ▼                             │
//!                        └──────────────────────────── (rebalance) ◀─────────────────────┘
//!   Empty ──DeleteGroup──▶ Dead (forgotten; a later join starts a new group)
//! ```
//!
//! **Persistence.** Every generation change and every Stable assignment
//! is written to the offsets log (`group::codec`) and durable before the
//! Join or Sync answers that carry it. On open the coordinator restores
//! each group's generation and protocol type but **no members**: the group
//! is `Empty` with the last generation, so the next rebalance forms
//! generation + 1 and every member from before the restart is fenced (its
//! heartbeat, sync and commits get `UnknownMemberId`; it rejoins). This is
//! simpler than restoring members with fresh session timers and never
//! reuses a generation; static members lose their assignment across a
//! restart (they rejoin and the leader assigns again).

pub(crate) mod codec;
mod coordinator;
mod reset;
pub(crate) mod state;

pub use coordinator::CommitFence;
pub(crate) use coordinator::GroupCoordinator;
pub use reset::{PartitionLog, ResetTo, non_empty, reset_targets};
pub use state::{Group, Join, JoinReply, Member, SyncReply};
pub use state::{
    GroupError, GroupState, MAX_ASSIGNMENT_BYTES, MAX_GROUP_MEMBERS, MAX_GROUPS,
    MAX_MEMBER_METADATA_BYTES, MAX_MEMBER_STRING_BYTES, MAX_PROTOCOLS_PER_MEMBER,
    MAX_REBALANCE_TIMEOUT_MS,
};
