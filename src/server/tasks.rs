//! The background tasks of the live state, one per object that needs one: a secret refresher per
//! key store, a health-check probe per upstream, a JWKS refresher per JWT issuer. Each task has
//! its own stop signal, so a config reload can end the tasks of what it replaced (an upstream whose
//! secret settings changed, a removed issuer) and start those of what it added, while the tasks of
//! everything it kept run on untouched. Objects are told apart by identity (`Arc::ptr_eq`): a
//! reload keeps an unchanged object as the same `Arc`.

use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{Live, SourceFor};
use crate::audit::Audit;
use crate::auth::jwks::Jwks;
use crate::proxy::Upstream;
use crate::secret::SecretStore;

struct Task {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Task {
    fn start<F: std::future::Future<Output = ()> + Send + 'static>(
        f: impl FnOnce(watch::Receiver<bool>) -> F,
    ) -> Self {
        let (stop, rx) = watch::channel(false);
        Self {
            stop,
            handle: tokio::spawn(f(rx)),
        }
    }
}

pub struct Tasks {
    audit: Audit,
    refreshers: Vec<(Arc<SecretStore>, Task)>,
    probes: Vec<(Arc<Upstream>, Task)>,
    jwks: Vec<(Arc<Jwks>, Task)>,
}

impl Tasks {
    pub fn new(audit: Audit) -> Self {
        Self {
            audit,
            refreshers: Vec::new(),
            probes: Vec::new(),
            jwks: Vec::new(),
        }
    }

    /// Start the refreshers of new secret sources (each fills its store).
    pub fn start_refreshers(&mut self, sources: Vec<SourceFor>) {
        for (name, store, source) in sources {
            let (s, audit) = (store.clone(), self.audit.clone());
            let task =
                Task::start(|stop| crate::secret::refresher::run(name, source, s, audit, stop));
            self.refreshers.push((store, task));
        }
    }

    /// Stop the refreshers of `stores` (sources started for a reload that was then refused).
    pub async fn stop_refreshers(&mut self, stores: &[Arc<SecretStore>]) {
        let gone = take_if(&mut self.refreshers, |s| {
            stores.iter().any(|x| Arc::ptr_eq(x, s))
        });
        finish(gone).await;
    }

    /// Make the running tasks match `live`: start the probes and JWKS refreshers of objects new
    /// in it; stop every task whose object it no longer holds.
    pub async fn sync(&mut self, live: &Live) {
        let ups = live.routes.all();
        for up in ups {
            if !self.probes.iter().any(|(u, _)| Arc::ptr_eq(u, up)) {
                let (u, audit) = (up.clone(), self.audit.clone());
                let task = Task::start(|stop| crate::proxy::probe::run(u, audit, stop));
                self.probes.push((up.clone(), task));
            }
        }
        let issuers = live.registry.jwt().map_or(&[][..], |j| j.issuers());
        for i in issuers {
            if !self.jwks.iter().any(|(k, _)| Arc::ptr_eq(k, &i.jwks)) {
                let (k, issuer) = (i.jwks.clone(), i.issuer.clone());
                self.jwks
                    .push((i.jwks.clone(), Task::start(|stop| k.run(issuer, stop))));
            }
        }
        let mut gone = take_if(&mut self.refreshers, |s| {
            !ups.iter().any(|u| Arc::ptr_eq(&u.store, s))
        });
        gone.extend(take_if(&mut self.probes, |u| {
            !ups.iter().any(|x| Arc::ptr_eq(x, u))
        }));
        gone.extend(take_if(&mut self.jwks, |k| {
            !issuers.iter().any(|i| Arc::ptr_eq(&i.jwks, k))
        }));
        finish(gone).await;
    }

    /// Stop everything (shutdown); waits for the refreshers and probes to end.
    pub async fn stop_all(self) {
        let all = self.refreshers.into_iter().map(|(_, t)| t);
        finish(all.chain(self.probes.into_iter().map(|(_, t)| t)).collect()).await;
        // JWKS refreshers only sleep or fetch: signalled, not awaited (as before reloads).
        for (_, t) in self.jwks {
            let _ = t.stop.send(true);
        }
    }
}

/// Remove from `tasks` those whose object `gone` says is gone; their tasks.
fn take_if<T>(tasks: &mut Vec<(Arc<T>, Task)>, gone: impl Fn(&Arc<T>) -> bool) -> Vec<Task> {
    let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(tasks)
        .into_iter()
        .partition(|(o, _)| gone(o));
    *tasks = kept;
    old.into_iter().map(|(_, t)| t).collect()
}

async fn finish(tasks: Vec<Task>) {
    for t in &tasks {
        let _ = t.stop.send(true);
    }
    for t in tasks {
        let _ = t.handle.await;
    }
}
