//! The embedded log's durable subscriptions: `subscriptions.json` beside `catalog.json`, written
//! whole and atomically (a temporary file, fsync, rename, fsync of the directory) on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_proto::{Error, Result, SubscriptionCatalog, SubscriptionState};
use tokio::sync::watch;

/// The subscriptions file and its current contents.
pub(crate) struct Subscriptions {
    path: PathBuf,
    current: watch::Sender<SubscriptionCatalog>,
    /// One writer at a time, so that the file and `current` change together.
    write: parking_lot::Mutex<()>,
}

impl Subscriptions {
    /// Reads `<dir>/subscriptions.json` (none yet: no subscriptions).
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("subscriptions.json");
        let all: BTreeMap<String, SubscriptionState> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(path.display().to_string(), e)),
        };
        Ok(Self {
            path,
            current: watch::channel(Arc::new(all)).0,
            write: parking_lot::Mutex::new(()),
        })
    }

    pub(crate) fn watch(&self) -> watch::Receiver<SubscriptionCatalog> {
        self.current.subscribe()
    }

    /// Sets (or with `None` removes) one subscription, durably.
    pub(crate) fn put(&self, name: &str, state: Option<&SubscriptionState>) -> Result<()> {
        let _one = self.write.lock();
        let mut next = (**self.current.borrow()).clone();
        match state {
            Some(s) => {
                let state = s.clone().applied_over(next.get(name));
                next.insert(name.to_owned(), state)
            }
            None => next.remove(name),
        };
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| Error::Corrupt(format!("subscriptions do not serialize: {e}")))?;
        write_atomically(&self.path, &bytes)?;
        self.current.send_replace(Arc::new(next));
        Ok(())
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let at = |e| Error::io(path.display().to_string(), e);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(at)?;
        f.write_all(bytes).map_err(at)?;
        f.sync_all().map_err(at)?;
    }
    std::fs::rename(&tmp, path).map_err(at)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::StreamName;

    #[test]
    fn subscriptions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let subs = Subscriptions::open(dir.path()).unwrap();
        let state = SubscriptionState {
            stream: StreamName::new("orders").unwrap(),
            event_type: None,
            filter: Some("true".into()),
            cursor: "v1.orders.0-3".into(),
            created_ms: 1,
            consumer: None,
            hold_unchanged: false,
        };
        subs.put("billing", Some(&state)).unwrap();
        subs.put("gone", Some(&state)).unwrap();
        subs.put("gone", None).unwrap();
        let again = Subscriptions::open(dir.path()).unwrap();
        let all = again.watch().borrow().clone();
        assert_eq!(all.len(), 1);
        assert_eq!(all.get("billing"), Some(&state));
    }
}
