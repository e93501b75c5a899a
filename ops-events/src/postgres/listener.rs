//! The `LISTEN` connection: turns `NOTIFY ops_events` (sent at commit by
//! [`PostgresOutbox::append`](super::PostgresOutbox::append), from any process) into
//! wake-ups of this process's waiting fetches.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use super::{CHANNEL, Shared};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Opens the `LISTEN` connection (on a pool of its own, so that it never takes one of
/// the caller's connections) and spawns the task that relays notifications; the task
/// ends when the last outbox clone is dropped. A failure here is not fatal: the task
/// keeps trying, and fetches poll meanwhile.
pub(super) async fn start(
    pool: &PgPool,
    connect_timeout: Duration,
    shared: Weak<Shared>,
    stopped: watch::Receiver<()>,
) {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let first = listen(&own).await;
    if let Err(e) = &first {
        tracing::warn!(error = %e, "postgres outbox: LISTEN failed; polling until it works");
    }
    set_listening(&shared, first.is_ok());
    tokio::spawn(relay(own, first.ok(), shared, stopped));
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn set_listening(shared: &Weak<Shared>, up: bool) {
    if let Some(shared) = shared.upgrade() {
        shared.listening.store(up, Ordering::Relaxed);
        // Up again: what was notified meanwhile is lost, so everyone looks once.
        // Down: waiting fetches switch to polling.
        shared.notify.notify_waiters();
    }
}

async fn relay(
    pool: PgPool,
    mut listener: Option<PgListener>,
    shared: Weak<Shared>,
    mut stopped: watch::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(current) = listener.as_mut() else {
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match listen(&pool).await {
                Ok(l) => {
                    tracing::info!("postgres outbox: LISTEN connection restored");
                    listener = Some(l);
                    backoff = Duration::from_millis(100);
                    set_listening(&shared, true);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "postgres outbox: LISTEN reconnect failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        let received = tokio::select! {
            _ = stopped.changed() => return,
            r = current.try_recv() => r,
        };
        match received {
            Ok(Some(_)) => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                shared.notify.notify_waiters();
            }
            Ok(None) | Err(_) => {
                if let Err(e) = &received {
                    tracing::warn!(error = %e, "postgres outbox: LISTEN connection lost; polling");
                } else {
                    tracing::warn!("postgres outbox: LISTEN connection lost; polling");
                }
                listener = None;
                set_listening(&shared, false);
            }
        }
    }
}
