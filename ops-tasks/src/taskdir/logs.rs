//! Following a captured log file while its task runs.

use std::future::Future;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How often a followed file is checked for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Largest chunk yielded at once.
const CHUNK: usize = 64 * 1024;

/// Streams the bytes of a log file from `offset` on, like `tail -f`: it waits for the
/// file to appear and for more bytes to be written, until `finished` resolves; then it
/// yields what remains up to the end of the file and ends.
///
/// Works for any executor whose logs are files (such as [`log_path`](super::log_path)).
///
/// ```no_run
/// # async fn demo(path: std::path::PathBuf, done: tokio::sync::oneshot::Receiver<()>) {
/// use futures::StreamExt;
/// let mut chunks = Box::pin(ops_tasks::taskdir::follow_log(path, 0, async move {
///     let _ = done.await;
/// }));
/// while let Some(chunk) = chunks.next().await {
///     let bytes: Vec<u8> = chunk.unwrap();
///     // forward `bytes` to the client
/// }
/// # }
/// ```
pub fn follow_log(
    path: impl Into<PathBuf>,
    offset: u64,
    finished: impl Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    let state = Follow {
        path: path.into(),
        offset,
        file: None,
        finished: Box::pin(finished),
        done: false,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(state))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

struct Follow {
    path: PathBuf,
    offset: u64,
    file: Option<tokio::fs::File>,
    finished: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl Follow {
    /// The next non-empty chunk, or `None` at the end.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if self.file.is_none() {
                match tokio::fs::File::open(&self.path).await {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(self.offset)).await?;
                        self.file = Some(f);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if self.done {
                            return Ok(None);
                        }
                        self.wait().await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(file) = self.file.as_mut() {
                let mut buf = vec![0; CHUNK];
                let n = file.read(&mut buf).await?;
                if n > 0 {
                    buf.truncate(n);
                    self.offset += n as u64;
                    return Ok(Some(buf));
                }
            }
            if self.done {
                return Ok(None);
            }
            self.wait().await;
        }
    }

    /// Waits for the next poll, or notes that the task finished (then one more read
    /// drains the file).
    async fn wait(&mut self) {
        tokio::select! {
            () = &mut self.finished => self.done = true,
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn follows_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stream = follow_log(path.clone(), 0, async move {
            let _ = rx.await;
        });
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(b"hello ").unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            f.write_all(b"world").unwrap();
            let _ = tx.send(());
        });
        let chunks: Vec<Vec<u8>> = stream.map(|c| c.unwrap()).collect().await;
        writer.await.unwrap();
        assert_eq!(chunks.concat(), b"hello world");
    }
}
