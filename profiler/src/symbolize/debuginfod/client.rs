//! One HTTP GET of a debuginfod file into an open file, with elfutils'
//! idea of a timeout: a server that delivers less than 100 KiB in
//! `DEBUGINFOD_TIMEOUT` seconds (the response headers included) is given
//! up, however long the whole transfer would take at a steady pace.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The least a server must deliver per timeout period (curl's low-speed
/// limit, as elfutils sets it).
const LOW_SPEED_BYTES: u64 = 100 * 1024;

/// Downloads larger than this get an info line when they start: they may
/// take a while.
const ANNOUNCE_BYTES: u64 = 64 << 20;

/// Why one request did not produce a file.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// 404: the server does not have it.
    #[error("not found")]
    NotFound,
    #[error("HTTP status {0}")]
    Status(reqwest::StatusCode),
    /// No connection could be made (refused, no route, DNS, TLS).
    #[error("unreachable ({})", root_cause(.0))]
    Unreachable(#[source] reqwest::Error),
    /// Less than 100 KiB in the timeout, or no answer at all.
    #[error("no progress within {}s (DEBUGINFOD_TIMEOUT)", .0.as_secs())]
    TimedOut(Duration),
    /// The connection broke during the transfer.
    #[error("transfer failed ({})", root_cause(.0))]
    Transfer(#[source] reqwest::Error),
    #[error("cannot write the download: {0}")]
    Write(#[source] std::io::Error),
}

impl FetchError {
    /// Whether the server itself is out of reach, so asking it about other
    /// files would only wait again.
    pub fn server_is_down(&self) -> bool {
        matches!(self, FetchError::Unreachable(_) | FetchError::TimedOut(_))
    }
}

/// The innermost cause (`Connection refused`, a DNS or TLS failure):
/// reqwest's own text only says "error sending request for url (...)".
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The HTTP side: one reqwest client, at most `permits` requests at once.
pub struct Http {
    client: reqwest::Client,
    timeout: Option<Duration>,
    permits: Arc<Semaphore>,
}

impl Http {
    /// A client for one batch of lookups. Built inside the runtime that
    /// will drive it: reqwest's connection pool belongs to one runtime.
    pub fn new(timeout: Option<Duration>, permits: usize) -> Result<Http, reqwest::Error> {
        let mut b =
            reqwest::Client::builder().user_agent(concat!("rprof-bpf/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = timeout {
            b = b.connect_timeout(t);
        }
        Ok(Http {
            client: b.build()?,
            timeout,
            permits: Arc::new(Semaphore::new(permits.max(1))),
        })
    }

    /// GETs `url` into `out`; the number of bytes written.
    pub async fn get(&self, url: &str, out: &mut std::fs::File) -> Result<u64, FetchError> {
        // The semaphore is never closed, so this cannot fail.
        let _permit = self.permits.acquire().await;
        let send = self.client.get(url).send();
        let resp = match self.timeout {
            Some(t) => tokio::time::timeout(t, send)
                .await
                .map_err(|_| FetchError::TimedOut(t))?,
            None => send.await,
        };
        let mut resp = resp.map_err(|e| {
            if e.is_timeout() {
                FetchError::TimedOut(self.timeout.unwrap_or_default())
            } else if e.is_connect() {
                FetchError::Unreachable(e)
            } else {
                FetchError::Transfer(e)
            }
        })?;
        match resp.status() {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::NOT_FOUND => return Err(FetchError::NotFound),
            s => return Err(FetchError::Status(s)),
        }
        if let Some(len) = resp.content_length().filter(|&n| n >= ANNOUNCE_BYTES) {
            tracing::info!("debuginfod: downloading {} MiB from {url}", len >> 20);
        }
        let mut pace = Pace::new(self.timeout);
        let mut total = 0u64;
        loop {
            let chunk = match pace.deadline() {
                Some(d) => match tokio::time::timeout_at(d, resp.chunk()).await {
                    Ok(c) => c,
                    Err(_) => {
                        pace.check(Instant::now())?;
                        continue;
                    }
                },
                None => resp.chunk().await,
            };
            let Some(bytes) = chunk.map_err(FetchError::Transfer)? else {
                break;
            };
            out.write_all(&bytes).map_err(FetchError::Write)?;
            total += bytes.len() as u64;
            pace.add(bytes.len() as u64);
        }
        out.flush().map_err(FetchError::Write)?;
        Ok(total)
    }
}

/// curl's low-speed check: each period of `timeout` must bring at least
/// [`LOW_SPEED_BYTES`], or the transfer is given up.
struct Pace {
    timeout: Option<Duration>,
    period_start: Instant,
    bytes: u64,
}

impl Pace {
    fn new(timeout: Option<Duration>) -> Pace {
        Pace {
            timeout,
            period_start: Instant::now(),
            bytes: 0,
        }
    }

    /// When the current period ends; `None` without a timeout.
    fn deadline(&self) -> Option<Instant> {
        Some(self.period_start + self.timeout?)
    }

    fn add(&mut self, n: u64) {
        self.bytes += n;
    }

    /// At the end of a period: enough came in (a new period starts), or not.
    fn check(&mut self, now: Instant) -> Result<(), FetchError> {
        let Some(t) = self.timeout else { return Ok(()) };
        if self.bytes < LOW_SPEED_BYTES {
            return Err(FetchError::TimedOut(t));
        }
        self.period_start = now;
        self.bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_period_must_bring_100_kib() {
        let t = Duration::from_secs(2);
        let mut p = Pace::new(Some(t));
        let start = p.period_start;
        assert_eq!(p.deadline(), Some(start + t));
        p.add(LOW_SPEED_BYTES);
        p.check(start + t).unwrap();
        assert_eq!(p.deadline(), Some(start + 2 * t));
        p.add(LOW_SPEED_BYTES - 1);
        assert!(matches!(p.check(start + 2 * t), Err(FetchError::TimedOut(d)) if d == t));
        // No timeout: no deadline, never an error.
        let mut p = Pace::new(None);
        assert_eq!(p.deadline(), None);
        p.check(Instant::now()).unwrap();
    }
}
