//! Reading a log back, batch by batch, to rebuild the state derived from
//! it: consumer offsets, the transaction coordinator, producer tables.

use ferry_proto::batch::{BatchIter, ValidBatch};
use ferry_storage::Log;

use crate::error::BrokerError;

/// Bytes read from the log at a time.
pub const REPLAY_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Calls `apply` with every batch of `log` that holds offsets at or after
/// `from`, in log order, up to the log end as of the call. A batch that
/// fails validation stops the replay with an error: state derived from a
/// log must not silently skip part of it.
pub fn replay(
    log: &Log,
    from: u64,
    mut apply: impl FnMut(&ValidBatch<'_>) -> Result<(), BrokerError>,
) -> Result<(), BrokerError> {
    let end = log.next_offset();
    let mut offset = from.max(log.log_start_offset());
    while offset < end {
        let chunk = log.read(offset, REPLAY_CHUNK_BYTES, end)?;
        if chunk.is_empty() {
            break;
        }
        for batch in BatchIter::new(&chunk) {
            let batch = batch?;
            let header = batch.header();
            if header.last_offset() >= offset {
                apply(&batch)?;
            }
            offset = offset.max(header.next_offset());
        }
    }
    Ok(())
}
