//! Each host on its own thread. A target blocks (ssh2), so it lives on a thread of its
//! own and the engine sends it work; async code never holds a lock across SSH, and one
//! host's slow step never stalls another host or the health probe.

use std::sync::mpsc;

use futures_util::StreamExt;

use crate::inputs::HostSpec;
use crate::targets::{HostState, ReleaseError, Target};

/// At most this many hosts are worked on at once.
pub const MAX_PARALLEL_HOSTS: usize = 8;

type Job = Box<dyn FnOnce(&mut dyn Target) + Send>;

/// A handle on one host's thread.
#[derive(Clone)]
pub struct Host {
    jobs: mpsc::Sender<Job>,
    /// Which host: known without asking its thread, which may be busy.
    pub spec: HostSpec,
}

impl Host {
    /// Starts the host's thread and makes its target there (`make` connects, which
    /// blocks); the thread ends when the last handle is dropped. The host is the one the
    /// target connected to (a Swarm target picks one of several).
    pub async fn start<F>(make: F) -> Result<Host, ReleaseError>
    where
        F: FnOnce() -> Result<Box<dyn Target>, ReleaseError> + Send + 'static,
    {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            let mut target = match make() {
                Ok(t) => {
                    let _ = ready_tx.send(Ok(t.state().spec));
                    t
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for job in queue {
                job(target.as_mut());
            }
        });
        let spec = ready
            .await
            .unwrap_or_else(|_| panic!("a host thread panicked while connecting"))?;
        Ok(Host { jobs, spec })
    }

    /// Runs `f` on the host's thread, after the work sent before it.
    pub async fn call<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Target) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |t| {
                let _ = tx.send(f(t));
            }))
            .unwrap_or_else(|_| panic!("a host thread ended early"));
        rx.await
            .unwrap_or_else(|_| panic!("a host thread panicked"))
    }

    pub async fn state(&self) -> HostState {
        self.call(|t| t.state()).await
    }
}

/// Runs `f` on every host, in parallel (at most [`MAX_PARALLEL_HOSTS`] at once); the
/// results in host order.
pub async fn on_all<T, F>(hosts: &[Host], f: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(&mut dyn Target) -> T + Clone + Send + 'static,
{
    futures_util::stream::iter(hosts.iter().map(|h| h.call(f.clone())))
        .buffered(MAX_PARALLEL_HOSTS)
        .collect()
        .await
}

/// Every host's state, in host order.
pub async fn states(hosts: &[Host]) -> Vec<HostState> {
    on_all(hosts, |t| t.state()).await
}
