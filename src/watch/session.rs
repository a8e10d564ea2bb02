//! One client's watch stream: its watchers, and the loop that serves their
//! creates, cancels and progress requests and delivers their events.
//!
//! Each watcher remembers the next revision it has to see. Whenever the
//! store applies a revision, the session brings every watcher that is behind
//! up to date: from the hub's memory if it still holds that revision, from
//! the store's history otherwise. Delivery waits for the client to take what
//! was sent, so a slow reader only falls behind (and later catches up from
//! history); nothing is queued for it beyond a few responses.
//!
//! The session runs inside the task that writes its responses to the client
//! (`serve`), not in a task of its own: an applied revision then wakes that
//! one task, where a task of its own would wake it in turn. On a busy member
//! each such hand-off between threads costs as much as the event's delivery.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Hub;
use crate::metrics::METRICS;
use crate::store::types::{Change, KvError, RevisionChanges};
use crate::store::{RangeEnd, Store};

/// About how many bytes of changes one delivery step reads.
const STEP_BYTES: usize = 1024 * 1024;

/// What a client asks of its stream.
pub enum Request {
    Create(CreateArgs),
    Cancel(i64),
    /// A progress notification once every watcher of the stream is up to date.
    Progress,
}

#[derive(Default)]
pub struct CreateArgs {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// 0: from the next revision.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// 0: the server chooses.
    pub watch_id: i64,
}

/// Responses a session may have made that the client has not taken yet.
const OUTBOUND_RESPONSES: usize = 16;

/// What the stream sends; `revision` is the store revision it speaks for.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// The answer to a create; a refused create has watch id -1 and a reason.
    Created { watch_id: i64, revision: i64, refused: Option<String> },
    Events { watch_id: i64, revision: i64, events: Vec<Change>, fragment: bool },
    /// The watcher needs revisions compaction removed; it is canceled.
    Compacted { watch_id: i64, revision: i64, compact_revision: i64 },
    Canceled { watch_id: i64, revision: i64 },
    /// Every event up to `revision` was sent (watch id -1: for the whole stream).
    Progress { watch_id: i64, revision: i64 },
}

/// The stream's error: the client goes on elsewhere.
type Outbound = mpsc::Sender<Result<Output, KvError>>;

pub struct SessionSettings {
    /// How often watchers that asked for it hear the current revision.
    pub progress_interval: Duration,
}

struct Watcher {
    key: Vec<u8>,
    end: RangeEnd,
    /// The next revision whose events this watcher has to see.
    next_revision: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
}

impl Watcher {
    fn wants(&self, change: &Change) -> bool {
        let filtered = if change.deleted { self.no_delete } else { self.no_put };
        !filtered && self.end.contains(&self.key, &change.kv.key)
    }

    fn event(&self, change: &Change) -> Change {
        Change {
            kv: change.kv.clone(),
            deleted: change.deleted,
            prev: if self.prev_kv { change.prev.clone() } else { None },
        }
    }
}

/// The client went away.
struct Gone;

/// Whether the stream's caller may watch `[key, range_end)`; Err holds the
/// reason a refused create reports.
pub type WatchPermission = Box<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

pub struct Session {
    hub: Arc<Hub>,
    store: Arc<Store>,
    out: Outbound,
    settings: SessionSettings,
    permitted: WatchPermission,
    watchers: BTreeMap<i64, Watcher>,
    next_watch_id: i64,
    progress_requested: bool,
}

/// etcd_mvcc_watcher_total counts the watchers of every open stream.
impl Drop for Session {
    fn drop(&mut self) {
        METRICS.watchers.sub(self.watchers.len() as i64);
    }
}

/// A session's outputs, read by the task the session runs in.
struct Served<F> {
    /// None once the session has ended; its last outputs may still wait.
    session: Option<Pin<Box<F>>>,
    outputs: ReceiverStream<Result<Output, KvError>>,
}

impl<F: Future<Output = ()>> Stream for Served<F> {
    type Item = Result<Output, KvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // The session's progress and the client's reading wake this same
        // task: taking an output frees room for the session's next one.
        if this.session.as_mut().is_some_and(|session| session.as_mut().poll(cx).is_ready()) {
            this.session = None;
        }
        this.outputs.poll_next_unpin(cx)
    }
}

impl Session {
    /// Serves one client's stream until the client goes away, or `ended`
    /// completes (the member stops, or lost its leader): the stream then ends
    /// with that error. A client that only closes its side (the JSON
    /// gateway's watch does once its request body ends) keeps its watchers,
    /// as in etcd. The session makes progress only while the returned stream
    /// is polled.
    pub fn serve(
        hub: Arc<Hub>,
        store: Arc<Store>,
        settings: SessionSettings,
        permitted: WatchPermission,
        requests: impl Stream<Item = Request> + Send + 'static,
        ended: impl Future<Output = KvError> + Send + 'static,
    ) -> impl Stream<Item = Result<Output, KvError>> + Send + 'static {
        let (out, outputs) = mpsc::channel(OUTBOUND_RESPONSES);
        let session = Session {
            hub,
            store,
            out,
            settings,
            permitted,
            watchers: BTreeMap::new(),
            next_watch_id: 0,
            progress_requested: false,
        };
        Served { session: Some(Box::pin(session.run(requests, ended))), outputs: ReceiverStream::new(outputs) }
    }

    async fn run(mut self, requests: impl Stream<Item = Request>, ended: impl Future<Output = KvError>) {
        let mut applied = self.hub.subscribe();
        let mut progress_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.progress_interval,
            self.settings.progress_interval,
        );
        futures::pin_mut!(requests);
        futures::pin_mut!(ended);
        let mut requests_open = true;
        loop {
            let upto = *applied.borrow_and_update();
            let behind = self.watchers.values().any(|w| w.next_revision <= upto);
            if !behind && self.progress_requested {
                self.progress_requested = false;
                if self.send(Output::Progress { watch_id: -1, revision: upto }).await.is_err() {
                    return;
                }
            }
            let step = tokio::select! {
                biased;
                error = &mut ended => {
                    let _ = self.out.send(Err(error)).await;
                    return;
                }
                request = requests.next(), if requests_open => match request {
                    Some(request) => self.handle(request, upto).await,
                    None => {
                        requests_open = false;
                        Ok(())
                    }
                },
                () = self.out.closed() => return,
                changed = applied.changed(), if !behind => match changed {
                    Ok(()) => Ok(()),
                    Err(_) => return, // the member is stopping
                },
                _ = progress_tick.tick() => self.notify_progress(upto).await,
                () = std::future::ready(()), if behind => self.deliver(upto).await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, output: Output) -> Result<(), Gone> {
        self.out.send(Ok(output)).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, request: Request, upto: i64) -> Result<(), Gone> {
        match request {
            Request::Create(args) => self.create(args, upto).await,
            Request::Cancel(watch_id) => {
                // etcd ignores a cancel of a watch id it does not know.
                if self.watchers.remove(&watch_id).is_some() {
                    METRICS.watchers.dec();
                    self.send(Output::Canceled { watch_id, revision: upto }).await?;
                }
                Ok(())
            }
            Request::Progress => {
                self.progress_requested = true;
                Ok(())
            }
        }
    }

    async fn create(&mut self, args: CreateArgs, upto: i64) -> Result<(), Gone> {
        let refuse = |reason: &str| Output::Created { watch_id: -1, revision: upto, refused: Some(reason.into()) };
        let end = RangeEnd::of(&args.range_end);
        if matches!(&end, RangeEnd::Before(e) if args.key.as_slice() >= e.as_slice()) {
            return self.send(refuse("mvcc: watcher range is empty")).await;
        }
        if args.start_revision < 0 {
            return self.send(refuse(&KvError::Compacted.to_string())).await;
        }
        // As etcd: checked once, when the watcher is made.
        if let Err(reason) = (self.permitted)(&args.key, &args.range_end) {
            return self.send(refuse(&reason)).await;
        }
        let watch_id = if args.watch_id != 0 {
            if self.watchers.contains_key(&args.watch_id) {
                return self.send(refuse("mvcc: duplicate watch ID provided on the WatchStream")).await;
            }
            args.watch_id
        } else {
            while self.watchers.contains_key(&self.next_watch_id) {
                self.next_watch_id += 1;
            }
            self.next_watch_id
        };
        self.send(Output::Created { watch_id, revision: upto, refused: None }).await?;
        let compact_revision = self.store.compact_revision();
        if args.start_revision > 0 && args.start_revision < compact_revision {
            return self.send(Output::Compacted { watch_id, revision: upto, compact_revision }).await;
        }
        let watcher = Watcher {
            key: args.key,
            end,
            next_revision: if args.start_revision == 0 { upto + 1 } else { args.start_revision },
            prev_kv: args.prev_kv,
            no_put: args.no_put,
            no_delete: args.no_delete,
            progress_notify: args.progress_notify,
            fragment: args.fragment,
        };
        self.watchers.insert(watch_id, watcher);
        METRICS.watchers.inc();
        Ok(())
    }

    async fn notify_progress(&mut self, upto: i64) -> Result<(), Gone> {
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next_revision > upto)
            .map(|(id, _)| *id)
            .collect();
        for watch_id in due {
            self.send(Output::Progress { watch_id, revision: upto }).await?;
        }
        Ok(())
    }

    /// One step towards `upto` for every watcher that is behind: watchers the
    /// hub's memory can serve first, then one history read for the others.
    async fn deliver(&mut self, upto: i64) -> Result<(), Gone> {
        let oldest_kept = self.hub.oldest_kept().unwrap_or(i64::MAX);
        let behind = || self.watchers.values().map(|w| w.next_revision).filter(|&r| r <= upto);
        let live_from = behind().filter(|&r| r >= oldest_kept).min();
        let lagging_from = behind().filter(|&r| r < oldest_kept).min();
        let mut history_from = lagging_from;
        if let Some(from) = live_from {
            match self.hub.recent(from, upto, STEP_BYTES) {
                Some((revisions, covered)) if covered >= from => self.send_changes(&revisions, from, covered).await?,
                // Dropped from memory meanwhile: these watchers read the history too.
                _ => history_from = Some(history_from.map_or(from, |h| h.min(from))),
            }
        }
        if let Some(from) = history_from {
            self.catch_up(from, upto).await?;
        }
        Ok(())
    }

    /// Reads the history for watchers the hub's memory no longer serves;
    /// those that need compacted revisions are canceled, as etcd does.
    async fn catch_up(&mut self, from: i64, upto: i64) -> Result<(), Gone> {
        let compact_revision = self.store.compact_revision();
        let compacted: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next_revision >= from && w.next_revision <= upto && w.next_revision < compact_revision)
            .map(|(id, _)| *id)
            .collect();
        for watch_id in compacted {
            self.watchers.remove(&watch_id);
            METRICS.watchers.dec();
            self.send(Output::Compacted { watch_id, revision: upto, compact_revision }).await?;
        }
        let from = from.max(compact_revision);
        let with_prev = self.watchers.values().any(|w| w.prev_kv && w.next_revision <= upto);
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || store.history(from, upto, STEP_BYTES, with_prev)).await;
        match read {
            Ok(Ok((revisions, covered))) => {
                let revisions: Vec<_> = revisions.into_iter().map(Arc::new).collect();
                self.send_changes(&revisions, from, covered).await
            }
            // Compacted since the check above: the next step cancels.
            Ok(Err(KvError::Compacted)) => Ok(()),
            Ok(Err(e)) => {
                let _ = self.out.send(Err(e)).await;
                Err(Gone)
            }
            Err(e) => {
                let _ = self.out.send(Err(KvError::Internal(e.to_string()))).await;
                Err(Gone)
            }
        }
    }

    /// Sends the events of `revisions` (which cover `from..=covered`) to every
    /// watcher whose next revision lies in that span, and moves it past.
    async fn send_changes(&mut self, revisions: &[Arc<RevisionChanges>], from: i64, covered: i64) -> Result<(), Gone> {
        let mut outputs = Vec::new();
        for (&watch_id, w) in self.watchers.iter_mut() {
            if w.next_revision < from || w.next_revision > covered {
                continue;
            }
            let events: Vec<Change> = revisions
                .iter()
                .filter(|r| r.revision >= w.next_revision)
                .flat_map(|r| r.changes.iter())
                .filter(|c| w.wants(c))
                .map(|c| w.event(c))
                .collect();
            w.next_revision = covered + 1;
            if !events.is_empty() {
                outputs.push(Output::Events { watch_id, revision: covered, events, fragment: w.fragment });
            }
        }
        for output in outputs {
            self.send(output).await?;
        }
        Ok(())
    }
}
