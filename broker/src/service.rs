//! The gRPC edge: turns `ferry.v1` requests into calls of the broker core
//! ([`BrokerState`]) and typed errors into `error_code` / `error_message`
//! fields. It decodes and encodes only; every check lives in the core.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_proto::ErrorCode;
use ferry_proto::v1::{self, ferry_server::Ferry};
use futures::stream::{FuturesOrdered, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Principal;
use crate::auth::acl::Caller;
use crate::auth::actions::Action;
use crate::error::BrokerError;
use crate::group::{CommitFence, GroupError, Join};
use crate::quota::{self, Direction};
use crate::state::{AckLevel, BrokerState, FetchSpec, Isolation, OffsetSpec};

/// Most produce requests one stream may have awaiting acknowledgement;
/// past it the broker stops reading the stream (backpressure).
pub const MAX_IN_FLIGHT_PER_STREAM: usize = 256;

/// The `ferry.v1.Ferry` service.
#[derive(Debug, Clone)]
pub struct FerryService {
    state: Arc<BrokerState>,
}

impl FerryService {
    /// A service over `state`.
    pub fn new(state: Arc<BrokerState>) -> FerryService {
        FerryService { state }
    }

    /// An offset commit needs read on the group and on every topic.
    fn authorize_commit(
        &self,
        who: &Caller,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        self.state.authorize(who, Action::UseGroup(group))?;
        offsets
            .iter()
            .try_for_each(|(topic, _, _)| self.state.authorize(who, Action::CommitTopic(topic)))
    }
}

/// Who sent `req`, for the authorizer: the principal the interceptor
/// found (none without authentication), and the client's address.
fn caller<T>(req: &Request<T>) -> Caller {
    Caller {
        principal: req.extensions().get::<Principal>().cloned(),
        host: crate::PeerInfo::of(req).map(|p| p.remote.ip()),
    }
}

fn err_fields(e: &BrokerError) -> (u32, String) {
    (e.code().as_u32(), e.to_string())
}

/// Responses that carry `error_code` and `error_message`.
trait ErrorFields: Default {
    fn set_error(&mut self, e: &BrokerError);
}

macro_rules! error_fields {
    ($($t:ty),* $(,)?) => {
        $(impl ErrorFields for $t {
            fn set_error(&mut self, e: &BrokerError) {
                (self.error_code, self.error_message) = err_fields(e);
            }
        })*
    };
}

error_fields!(
    v1::CreateTopicResponse,
    v1::DeleteTopicResponse,
    v1::CommitOffsetsResponse,
    v1::AddPartitionsToTxnResponse,
    v1::AddOffsetsToTxnResponse,
    v1::TxnOffsetCommitResponse,
    v1::AbortTransactionResponse,
    v1::HeartbeatResponse,
    v1::DeleteGroupResponse,
);

/// A response that only reports success or its error.
fn respond<T: ErrorFields>(r: Result<(), BrokerError>) -> Response<T> {
    let mut resp = T::default();
    if let Err(e) = r {
        resp.set_error(&e);
    }
    Response::new(resp)
}

fn epoch_of(raw: i32) -> Result<i16, BrokerError> {
    i16::try_from(raw)
        .map_err(|_| BrokerError::InvalidRequest(format!("producer epoch {raw} out of range")))
}

fn acks_of(raw: i32) -> Result<AckLevel, BrokerError> {
    match v1::Acks::try_from(raw) {
        Ok(v1::Acks::All) => Ok(AckLevel::All),
        Ok(v1::Acks::Leader) => Ok(AckLevel::Leader),
        Ok(v1::Acks::None) => Ok(AckLevel::None),
        Err(_) => Err(BrokerError::InvalidRequest(format!(
            "unknown acks value {raw}"
        ))),
    }
}

fn produce_response(
    correlation_id: u64,
    r: Result<ferry_storage::AppendInfo, BrokerError>,
) -> v1::ProduceResponse {
    match r {
        Ok(info) => v1::ProduceResponse {
            correlation_id,
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_start_offset: info.log_start_offset,
            ..Default::default()
        },
        Err(e) => {
            let (error_code, error_message) = err_fields(&e);
            if e.code() == ErrorCode::StorageError {
                tracing::error!(error = %e, "produce failed in storage");
            }
            v1::ProduceResponse {
                correlation_id,
                error_code,
                error_message,
                ..Default::default()
            }
        }
    }
}

type ProduceStream = Pin<Box<dyn Stream<Item = Result<v1::ProduceResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ferry for FerryService {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let state = self.state.clone();
        let r = tokio::task::spawn_blocking(move || {
            state.authorize(&who, Action::CreateTopic(&req.name))?;
            let config = crate::TopicConfig::from_pairs(
                req.configs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )?;
            state.create_topic_with_config(&req.name, req.partitions, config)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(respond(r))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let state = self.state.clone();
        let r = tokio::task::spawn_blocking(move || {
            state.authorize(&who, Action::DeleteTopic(&req.name))?;
            state.delete_topic(&req.name)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(respond(r))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let who = caller(&request);
        let topics = self
            .state
            .topics()
            .iter()
            .filter(|t| self.state.may(&who, Action::DescribeTopic(&t.name)))
            .map(|t| v1::TopicSummary {
                name: t.name.to_string(),
                partitions: t.partitions.len() as u32,
            })
            .collect();
        Ok(Response::new(v1::ListTopicsResponse {
            topics,
            ..Default::default()
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let mut resp = v1::DescribeTopicResponse {
            name: req.name.clone(),
            ..Default::default()
        };
        match self
            .state
            .authorize(&who, Action::DescribeTopic(&req.name))
            .and_then(|()| self.state.topic(&req.name))
        {
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
            Ok(topic) => {
                resp.partitions = topic
                    .partitions
                    .iter()
                    .map(|p| v1::PartitionInfo {
                        partition: p.id,
                        log_start_offset: p.log.log_start_offset(),
                        high_watermark: p.log.next_offset(),
                        last_stable_offset: p.last_stable_offset(),
                        durable_watermark: p.log.durable_offset(),
                        size_bytes: p.log.size_bytes(),
                        segments: p.log.segments().len() as u32,
                    })
                    .collect();
                resp.configs = self.state.topic_configs(&topic).into_iter().collect();
            }
        }
        Ok(Response::new(resp))
    }

    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let allowed = self.state.authorize(
            &who,
            Action::Produce {
                topic: &req.topic,
                transactional_id: None,
            },
        );
        let throttle = self.state.charge(&who, Direction::Produce, req.batch.len());
        let r = match allowed.and_then(|()| acks_of(req.acks)) {
            Ok(acks) => {
                self.state
                    .produce(&req.topic, req.partition, &req.batch, acks)
                    .await
            }
            Err(e) => Err(e),
        };
        let mut resp = produce_response(req.correlation_id, r);
        resp.throttle_time_ms = quota::millis(throttle);
        tokio::time::sleep(throttle).await;
        Ok(Response::new(resp))
    }

    type ProduceStreamStream = ProduceStream;

    async fn produce_stream(
        &self,
        request: Request<Streaming<v1::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let who = caller(&request);
        let mut inbound = request.into_inner();
        let state = self.state.clone();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT_PER_STREAM);
        tokio::spawn(async move {
            // Appends happen in arrival order as requests are read; the
            // waits for durability run concurrently, and responses leave in
            // request order, so one partition's acks are never reordered.
            // A caller over its quota has its next request left unread
            // until the throttle has passed; its responses still leave.
            let mut pending = FuturesOrdered::new();
            let mut shutdown = state.shutdown_signal();
            let mut open = true;
            let mute = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(mute);
            let mut muted = false;
            while open || !pending.is_empty() {
                tokio::select! {
                    () = &mut mute, if muted => muted = false,
                    req = inbound.next(), if open && !muted && pending.len() < MAX_IN_FLIGHT_PER_STREAM => {
                        match req {
                            Some(Ok(req)) => {
                                let (throttle, reply) = handle_streamed(state.clone(), &who, req);
                                pending.push_back(reply);
                                if !throttle.is_zero() {
                                    mute.as_mut().reset(tokio::time::Instant::now() + throttle);
                                    muted = true;
                                }
                            }
                            Some(Err(status)) => {
                                tracing::debug!(%status, "produce stream ended with an error");
                                open = false;
                            }
                            None => open = false,
                        }
                    }
                    Some(resp) = pending.next(), if !pending.is_empty() => {
                        if let Some(resp) = resp
                            && tx.send(Ok(resp)).await.is_err()
                        {
                            return;
                        }
                    }
                    _ = crate::state::shutdown_begun(&mut shutdown), if open => open = false,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let allowed = req
            .partitions
            .iter()
            .try_for_each(|p| self.state.authorize(&who, Action::Consume(&p.topic)));
        let specs = req
            .partitions
            .into_iter()
            .map(|p| FetchSpec {
                topic: p.topic,
                partition: p.partition,
                offset: p.offset,
                max_bytes: if p.max_bytes == 0 {
                    u32::MAX
                } else {
                    p.max_bytes
                },
            })
            .collect();
        let max_bytes = if req.max_bytes == 0 {
            usize::MAX
        } else {
            req.max_bytes as usize
        };
        let isolation = match allowed.map(|()| v1::IsolationLevel::try_from(req.isolation)) {
            Err(e) => Err(e),
            Ok(Ok(v1::IsolationLevel::ReadCommitted)) => Ok(Isolation::ReadCommitted),
            Ok(Ok(v1::IsolationLevel::ReadUncommitted)) => Ok(Isolation::ReadUncommitted),
            Ok(Err(_)) => Err(BrokerError::InvalidRequest(format!(
                "unknown isolation level {}",
                req.isolation
            ))),
        };
        let r = match isolation {
            Ok(isolation) => {
                self.state
                    .fetch(
                        specs,
                        Duration::from_millis(u64::from(req.max_wait_ms)),
                        req.min_bytes as usize,
                        max_bytes,
                        isolation,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        let mut resp = v1::FetchResponse::default();
        let bytes = r.as_ref().map_or(0, |rs| {
            rs.iter()
                .map(|r| r.records.as_ref().map_or(0, |b| b.len()))
                .sum()
        });
        let throttle = self.state.charge(&who, Direction::Fetch, bytes);
        resp.throttle_time_ms = quota::millis(throttle);
        match r {
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
            Ok(results) => {
                resp.partitions = results
                    .into_iter()
                    .map(|r| {
                        let mut out = v1::FetchPartitionResult {
                            topic: r.spec.topic,
                            partition: r.spec.partition,
                            high_watermark: r.high_watermark,
                            last_stable_offset: r.last_stable_offset,
                            log_start_offset: r.log_start_offset,
                            aborted_transactions: r
                                .aborted
                                .iter()
                                .map(|a| v1::AbortedTransaction {
                                    producer_id: a.producer_id,
                                    first_offset: a.first_offset,
                                })
                                .collect(),
                            ..Default::default()
                        };
                        match r.records {
                            Ok(b) => out.records = b,
                            Err(e) => (out.error_code, out.error_message) = err_fields(&e),
                        }
                        out
                    })
                    .collect();
            }
        }
        tokio::time::sleep(throttle).await;
        Ok(Response::new(resp))
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let spec = match v1::OffsetSpec::try_from(req.spec) {
            Ok(v1::OffsetSpec::Earliest) => Ok(OffsetSpec::Earliest),
            Ok(v1::OffsetSpec::Latest) => Ok(OffsetSpec::Latest),
            Ok(v1::OffsetSpec::ByTimestamp) => Ok(OffsetSpec::ByTimestamp(req.timestamp_ms)),
            Err(_) => Err(BrokerError::InvalidRequest(format!(
                "unknown offset spec {}",
                req.spec
            ))),
        };
        let r = self
            .state
            .authorize(&who, Action::DescribeTopic(&req.topic))
            .and(spec)
            .and_then(|spec| self.state.list_offset(&req.topic, req.partition, spec));
        let mut resp = v1::ListOffsetsResponse::default();
        match r {
            Ok(o) => resp.offset = o,
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn init_producer_id(
        &self,
        request: Request<v1::InitProducerIdRequest>,
    ) -> Result<Response<v1::InitProducerIdResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let mut resp = v1::InitProducerIdResponse::default();
        let id = Some(req.transactional_id.as_str()).filter(|id| !id.is_empty());
        let r = if let Err(e) = self.state.authorize(&who, Action::InitProducer(id)) {
            Err(e)
        } else if req.transactional_id.is_empty() {
            let state = self.state.clone();
            tokio::task::spawn_blocking(move || state.allocate_producer_id())
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map(|id| (id, 0))
        } else {
            let _busy = self.state.enter();
            self.state
                .init_producer_id(&req.transactional_id, req.transaction_timeout_ms, false)
                .await
        };
        match r {
            Ok((id, epoch)) => {
                resp.producer_id = id;
                resp.producer_epoch = i32::from(epoch);
            }
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn add_partitions_to_txn(
        &self,
        request: Request<v1::AddPartitionsToTxnRequest>,
    ) -> Result<Response<v1::AddPartitionsToTxnResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let parts: Vec<_> = req
            .partitions
            .into_iter()
            .map(|tp| (tp.topic, tp.partition))
            .collect();
        let r = async {
            let id = &req.transactional_id;
            self.state.authorize(&who, Action::UseTransaction(id))?;
            for (topic, _) in &parts {
                let action = Action::Produce {
                    topic,
                    transactional_id: Some(id),
                };
                self.state.authorize(&who, action)?;
            }
            let epoch = epoch_of(req.producer_epoch)?;
            self.state
                .add_partitions_to_txn(&req.transactional_id, req.producer_id, epoch, &parts)
                .await
        }
        .await;
        Ok(respond(r))
    }

    async fn add_offsets_to_txn(
        &self,
        request: Request<v1::AddOffsetsToTxnRequest>,
    ) -> Result<Response<v1::AddOffsetsToTxnResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let r = async {
            self.state
                .authorize(&who, Action::UseTransaction(&req.transactional_id))?;
            self.state.authorize(&who, Action::UseGroup(&req.group))?;
            let epoch = epoch_of(req.producer_epoch)?;
            self.state
                .add_offsets_to_txn(&req.transactional_id, req.producer_id, epoch, &req.group)
                .await
        }
        .await;
        Ok(respond(r))
    }

    async fn txn_offset_commit(
        &self,
        request: Request<v1::TxnOffsetCommitRequest>,
    ) -> Result<Response<v1::TxnOffsetCommitResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let offsets: Vec<_> = req
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect();
        let r = async {
            self.state
                .authorize(&who, Action::UseTransaction(&req.transactional_id))?;
            self.authorize_commit(&who, &req.group, &offsets)?;
            let epoch = epoch_of(req.producer_epoch)?;
            self.state
                .txn_offset_commit(
                    &req.transactional_id,
                    req.producer_id,
                    epoch,
                    &req.group,
                    &offsets,
                    &CommitFence {
                        generation: req.generation_id,
                        member_id: req.member_id,
                        instance_id: req.group_instance_id,
                    },
                )
                .await
        }
        .await;
        Ok(respond(r))
    }

    async fn end_txn(
        &self,
        request: Request<v1::EndTxnRequest>,
    ) -> Result<Response<v1::EndTxnResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let r = async {
            self.state
                .authorize(&who, Action::UseTransaction(&req.transactional_id))?;
            let epoch = epoch_of(req.producer_epoch)?;
            self.state
                .end_txn(&req.transactional_id, req.producer_id, epoch, req.commit)
                .await
        }
        .await;
        let mut resp = v1::EndTxnResponse::default();
        match r {
            Ok((pid, epoch)) => {
                resp.producer_id = pid;
                resp.producer_epoch = i32::from(epoch);
            }
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn list_transactions(
        &self,
        request: Request<v1::ListTransactionsRequest>,
    ) -> Result<Response<v1::ListTransactionsResponse>, Status> {
        let who = caller(&request);
        let now = ferry_proto::now_ms();
        let transactions = self
            .state
            .list_transactions()
            .into_iter()
            .filter(|m| {
                self.state
                    .may(&who, Action::DescribeTransaction(&m.transactional_id))
            })
            .map(|m| v1::TransactionInfo {
                hanging: m.is_hanging(now),
                transactional_id: m.transactional_id,
                producer_id: m.producer_id,
                producer_epoch: i32::from(m.epoch),
                state: m.state.name().to_string(),
                partitions: m
                    .partitions
                    .into_iter()
                    .map(|(topic, partition)| v1::TopicPartition { topic, partition })
                    .collect(),
                groups: m.groups.into_iter().collect(),
                started_ms: m.started_ms,
                timeout_ms: m.timeout_ms,
            })
            .collect();
        Ok(Response::new(v1::ListTransactionsResponse {
            transactions,
            ..Default::default()
        }))
    }

    async fn abort_transaction(
        &self,
        request: Request<v1::AbortTransactionRequest>,
    ) -> Result<Response<v1::AbortTransactionResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let r = match self.state.authorize(&who, Action::AbortTransaction) {
            Ok(()) => self.state.abort_transaction(&req.transactional_id).await,
            Err(e) => Err(e),
        };
        Ok(respond(r))
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let offsets: Vec<_> = req
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect();
        let fence = CommitFence {
            generation: req.generation_id,
            member_id: req.member_id,
            instance_id: req.group_instance_id,
        };
        let r = match self.authorize_commit(&who, &req.group, &offsets) {
            Ok(()) => {
                self.state
                    .commit_offsets(&req.group, &offsets, &fence)
                    .await
            }
            Err(e) => Err(e),
        };
        Ok(respond(r))
    }

    async fn fetch_offsets(
        &self,
        request: Request<v1::FetchOffsetsRequest>,
    ) -> Result<Response<v1::FetchOffsetsResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let mut resp = v1::FetchOffsetsResponse::default();
        let allowed = self
            .state
            .authorize(&who, Action::DescribeGroup(&req.group))
            .and_then(|()| {
                self.state
                    .authorize(&who, Action::DescribeTopic(&req.topic))
            });
        match allowed.and_then(|()| {
            self.state
                .fetch_offsets(&req.group, &req.topic, req.require_stable)
        }) {
            Ok(offsets) => {
                resp.offsets = offsets
                    .into_iter()
                    .map(|(partition, offset)| v1::PartitionOffset {
                        topic: req.topic.clone(),
                        partition,
                        offset,
                    })
                    .collect();
            }
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn join_group(
        &self,
        request: Request<v1::JoinGroupRequest>,
    ) -> Result<Response<v1::JoinGroupResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let host = who.host.map(|h| h.to_string()).unwrap_or_default();
        let req = request.into_inner();
        let join = Join {
            member_id: req.member_id,
            instance_id: req.group_instance_id,
            client_id: req.client_id,
            host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocol_type: req.protocol_type,
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name, p.metadata.to_vec()))
                .collect(),
            fresh_member_id: String::new(),
        };
        let mut resp = v1::JoinGroupResponse::default();
        let joined = match self.state.authorize(&who, Action::UseGroup(&req.group)) {
            Ok(()) => self.state.join_group(&req.group, join).await,
            Err(e) => Err(e),
        };
        match joined {
            Ok(r) => {
                resp.generation_id = r.generation;
                resp.protocol_name = r.protocol_name;
                resp.leader_id = r.leader;
                resp.member_id = r.member_id;
                resp.skip_assignment = r.skip_assignment;
                resp.members = r
                    .members
                    .into_iter()
                    .map(
                        |(member_id, group_instance_id, metadata)| v1::JoinGroupMember {
                            member_id,
                            group_instance_id,
                            metadata: metadata.into(),
                        },
                    )
                    .collect();
            }
            Err(e) => {
                if let BrokerError::Group(GroupError::MemberIdRequired(id)) = &e {
                    resp.member_id = id.clone();
                }
                (resp.error_code, resp.error_message) = err_fields(&e);
            }
        }
        Ok(Response::new(resp))
    }

    async fn sync_group(
        &self,
        request: Request<v1::SyncGroupRequest>,
    ) -> Result<Response<v1::SyncGroupResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let assignments = req
            .assignments
            .into_iter()
            .map(|a| (a.member_id, a.assignment.to_vec()))
            .collect();
        let allowed = self.state.authorize(&who, Action::UseGroup(&req.group));
        let r = match allowed {
            Err(e) => Err(e),
            Ok(()) => {
                self.state
                    .sync_group(
                        &req.group,
                        &req.member_id,
                        &req.group_instance_id,
                        req.generation_id,
                        &req.protocol_type,
                        &req.protocol_name,
                        assignments,
                    )
                    .await
            }
        };
        let mut resp = v1::SyncGroupResponse::default();
        match r {
            Ok(r) => {
                resp.protocol_name = r.protocol_name;
                resp.assignment = r.assignment.into();
            }
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let r = match self.state.authorize(&who, Action::UseGroup(&req.group)) {
            Ok(()) => {
                self.state
                    .heartbeat(
                        &req.group,
                        &req.member_id,
                        &req.group_instance_id,
                        req.generation_id,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        Ok(respond(r))
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        let members = req
            .members
            .into_iter()
            .map(|m| (m.member_id, m.group_instance_id))
            .collect();
        let mut resp = v1::LeaveGroupResponse::default();
        let left = match self.state.authorize(&who, Action::UseGroup(&req.group)) {
            Ok(()) => self.state.leave_group(&req.group, members).await,
            Err(e) => Err(e),
        };
        match left {
            Ok(results) => {
                resp.members = results
                    .into_iter()
                    .map(
                        |(member_id, group_instance_id, r)| v1::LeaveGroupMemberResult {
                            member_id,
                            group_instance_id,
                            error_code: r.err().map_or(0, |e| BrokerError::from(e).code().as_u32()),
                        },
                    )
                    .collect();
            }
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn list_groups(
        &self,
        request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let who = caller(&request);
        let groups = self
            .state
            .list_groups()
            .await
            .into_iter()
            .filter(|g| self.state.may(&who, Action::DescribeGroup(&g.name)))
            .map(|g| v1::GroupSummary {
                state: g.state.name().to_string(),
                members: g.members.len() as u32,
                protocol_type: g.protocol_type,
                group: g.name,
            })
            .collect();
        Ok(Response::new(v1::ListGroupsResponse {
            groups,
            ..Default::default()
        }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let mut resp = v1::DescribeGroupResponse {
            group: req.group.clone(),
            ..Default::default()
        };
        let described = match self
            .state
            .authorize(&who, Action::DescribeGroup(&req.group))
        {
            Ok(()) => self.state.describe_group(&req.group).await,
            Err(e) => Err(e),
        };
        match described {
            Ok(g) => {
                resp.state = g.state.name().to_string();
                resp.generation_id = g.generation;
                resp.members = g
                    .members
                    .iter()
                    .map(|m| v1::GroupMemberInfo {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        host: m.host.clone(),
                        metadata: m.metadata(&g.protocol_name).to_vec().into(),
                        assignment: m.assignment.clone().into(),
                    })
                    .collect();
                resp.protocol_type = g.protocol_type;
                resp.protocol_name = g.protocol_name;
                resp.leader_id = g.leader;
            }
            Err(e) => (resp.error_code, resp.error_message) = err_fields(&e),
        }
        Ok(Response::new(resp))
    }

    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        let _busy = self.state.enter();
        let who = caller(&request);
        let req = request.into_inner();
        Ok(respond(
            match self.state.authorize(&who, Action::DeleteGroup(&req.group)) {
                Ok(()) => self.state.delete_group(&req.group).await,
                Err(e) => Err(e),
            },
        ))
    }
}

/// Appends one streamed request now and returns the caller's quota
/// throttle and the future of its response; `None` means no response is
/// due (acks = none, success).
fn handle_streamed(
    state: Arc<BrokerState>,
    who: &Caller,
    req: v1::ProduceRequest,
) -> (
    Duration,
    impl std::future::Future<Output = Option<v1::ProduceResponse>> + Send,
) {
    let started = Instant::now();
    let throttle = state.charge(who, Direction::Produce, req.batch.len());
    let busy = state.enter();
    let id = req.correlation_id;
    let allowed = state.authorize(
        who,
        Action::Produce {
            topic: &req.topic,
            transactional_id: None,
        },
    );
    let appended = allowed.and_then(|()| acks_of(req.acks)).and_then(|acks| {
        state
            .append(&req.topic, req.partition, &req.batch)
            .map(|(p, info)| (p, info, acks))
    });
    let throttle_time_ms = quota::millis(throttle);
    let reply = async move {
        let _busy = busy;
        let mut resp = match appended {
            Err(e) => produce_response(id, Err(e)),
            Ok((_, _, AckLevel::None)) => return None,
            Ok((p, info, acks)) => {
                let r = state.await_ack(&p, &info, acks).await.map(|()| info);
                metrics::histogram!("ferry_produce_latency_seconds")
                    .record(started.elapsed().as_secs_f64());
                produce_response(id, r)
            }
        };
        resp.throttle_time_ms = throttle_time_ms;
        Some(resp)
    };
    (throttle, reply)
}

/// The most partitions a topic created by [`serve_encoded`] gets.
#[doc(hidden)]
pub const MAX_FUZZED_PARTITIONS: u32 = 4;

/// How many unary RPCs [`serve_encoded`] picks among.
#[doc(hidden)]
pub const FUZZED_RPCS: u8 = 23;

/// Decodes `bytes` as the protobuf request of the unary RPC `rpc` picks
/// (modulo [`FUZZED_RPCS`]) and serves it: the path of a gRPC request
/// after the transport, for fuzzing the handlers' checks of what prost
/// decoded. `None` when prost refuses the bytes. A fetch's wait is capped
/// so that a run does not stall, and a new topic's partitions at
/// [`MAX_FUZZED_PARTITIONS`] so that a run does not fill the disk with
/// segment files; everything else is served as sent.
#[doc(hidden)]
pub async fn serve_encoded(
    service: &FerryService,
    rpc: u8,
    bytes: &[u8],
) -> Option<Result<(), Status>> {
    use prost::Message;
    macro_rules! call {
        ($method:ident, $req:ty) => {{
            let req = <$req>::decode(bytes).ok()?;
            service.$method(Request::new(req)).await.map(|_| ())
        }};
    }
    Some(match rpc % FUZZED_RPCS {
        0 => {
            let mut req = v1::CreateTopicRequest::decode(bytes).ok()?;
            req.partitions = req.partitions.min(MAX_FUZZED_PARTITIONS);
            service.create_topic(Request::new(req)).await.map(|_| ())
        }
        1 => call!(delete_topic, v1::DeleteTopicRequest),
        2 => call!(list_topics, v1::ListTopicsRequest),
        3 => call!(describe_topic, v1::DescribeTopicRequest),
        4 => call!(produce, v1::ProduceRequest),
        5 => {
            let mut req = v1::FetchRequest::decode(bytes).ok()?;
            req.max_wait_ms = req.max_wait_ms.min(10);
            service.fetch(Request::new(req)).await.map(|_| ())
        }
        6 => call!(list_offsets, v1::ListOffsetsRequest),
        7 => call!(init_producer_id, v1::InitProducerIdRequest),
        8 => call!(add_partitions_to_txn, v1::AddPartitionsToTxnRequest),
        9 => call!(add_offsets_to_txn, v1::AddOffsetsToTxnRequest),
        10 => call!(txn_offset_commit, v1::TxnOffsetCommitRequest),
        11 => call!(end_txn, v1::EndTxnRequest),
        12 => call!(list_transactions, v1::ListTransactionsRequest),
        13 => call!(abort_transaction, v1::AbortTransactionRequest),
        14 => call!(commit_offsets, v1::CommitOffsetsRequest),
        15 => call!(fetch_offsets, v1::FetchOffsetsRequest),
        16 => call!(join_group, v1::JoinGroupRequest),
        17 => call!(sync_group, v1::SyncGroupRequest),
        18 => call!(heartbeat, v1::HeartbeatRequest),
        19 => call!(leave_group, v1::LeaveGroupRequest),
        20 => call!(list_groups, v1::ListGroupsRequest),
        21 => call!(describe_group, v1::DescribeGroupRequest),
        _ => call!(delete_group, v1::DeleteGroupRequest),
    })
}
